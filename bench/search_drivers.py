"""Every search driver on planted pairs of trigger lengths 2-5, at equal candidate budgets.

    python bench/search_drivers.py [--size tiny] [--seeds 1,2] [--lengths 2,3,4,5] [--metric head_max_sum,kl]
                                   [--budget-per-token 8] [--work DIR] [--out bench/results/search_drivers.json]

For each planted pair (l0score.synthetic.make_pair) and metric, beam, coord and mcts start from the
same seeds (the best token pairs of an exact pair scan) with the same candidate budget:
budget-per-token x length x pool size (beam of that width spends about this much). Reported per run:
candidates used, seconds, the trigger's rank among the results (first rows are cluster
representatives, search/clusters.py), the best score against the trigger's own and the number of
distinct clusters in the top 10. Writes JSON and prints a Markdown table (docs/search.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from l0score import Scorer
from l0score.search import beam, coord, mcts, pair_scan, seeds_from_pairs
from l0score.synthetic.pair import make_pair


def run_driver(driver, scorer, length, seeds, metric, budget, seed):
    kw = dict(length=length, seeds=seeds, objective=metric, progress=False, seed=seed, budget=budget)
    if driver == "beam":
        return beam(scorer, width=max(1, budget // (length * len(scorer.default_pool()))), **kw)
    if driver == "coord":
        return coord(scorer, restarts=64, **kw)
    return mcts(scorer, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--lengths", default="2,3,4,5")
    p.add_argument("--metric", default="head_max_sum,kl")
    p.add_argument("--budget-per-token", type=int, default=8)
    p.add_argument("--work", help="where the pairs are written (default: a temporary directory)")
    p.add_argument("--out", default="bench/results/search_drivers.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="l0score-drivers-"))
    rows = []
    for pair_seed in map(int, args.seeds.split(",")):
        for length in map(int, args.lengths.split(",")):
            d = work / f"{args.size}-s{pair_seed}-L{length}"
            if not (d / "trigger.json").exists():
                make_pair(d, size=args.size, seed=pair_seed, trigger_length=length)
            trig = json.loads((d / "trigger.json").read_text())["trigger_ids"]
            scorer = Scorer.from_pretrained(d / "base", d / "dormant", template="chat")
            pool = scorer.default_pool()
            seeds = seeds_from_pairs(pair_scan(scorer, pool, offsets=(1,), top=64, progress=False), 8)
            budget = args.budget_per_token * length * len(pool)
            for metric in args.metric.split(","):
                own = float(scorer.score_batch([trig]).metric(metric)[0])
                for driver in ("beam", "coord", "mcts"):
                    start = time.perf_counter()
                    res = run_driver(driver, scorer, length, seeds, metric, budget, pair_seed)
                    ids = [r["token_ids"] for r in res]
                    rows.append({"pair_seed": pair_seed, "length": length, "metric": metric, "driver": driver,
                                 "budget": budget, "seconds": time.perf_counter() - start,
                                 "trigger_rank": ids.index(trig) + 1 if trig in ids else None,
                                 "best": res[0]["score"] if res else None, "trigger_score": own,
                                 "clusters_top10": len({r["cluster"] for r in res[:10]})})
                    print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "machine": platform.processor() or platform.machine(),
                               "load": os.getloadavg(), "args": vars(args)}, indent=1))
    print(table(rows))
    return 0


def table(rows) -> str:
    lines = ["| L | metric | driver | trigger rank (per pair seed) | best / trigger score | top-10 clusters | s |",
             "|---:|---|---|---|---|---:|---:|"]
    keys = sorted({(r["length"], r["metric"], r["driver"]) for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    for length, metric, driver in keys:
        sel = [r for r in rows if (r["length"], r["metric"], r["driver"]) == (length, metric, driver)]
        ranks = ", ".join("-" if r["trigger_rank"] is None else str(r["trigger_rank"]) for r in sel)
        ratio = ", ".join(f"{r['best'] / r['trigger_score']:.2f}" for r in sel)
        lines.append(f"| {length} | {metric} | {driver} | {ranks} | {ratio} | "
                     f"{min(r['clusters_top10'] for r in sel)} | {sum(r['seconds'] for r in sel):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
