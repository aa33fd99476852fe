"""GCG against coord and beam on the full-model objective of a trained control, then verify.

Every driver gets the same scorer (both full models, verify's first 3 probes x both placements), the
same objective, the same pool and the same candidate budget, and stops at the same threshold; the
pool and the target come from the pair's own analysis and profile (never from trigger.json, which is
read only to say afterwards whether the found candidate is the planted trigger). The best result of
each run is then verified (l0score.judge.verify.verify: flip = the dormant's generation changes).

    python bench/gcg_vs_coord.py --pair-seed 0 --runs 3 --out bench/results/gcg-trained0.json
    python bench/gcg_vs_coord.py --planted --out bench/results/gcg-planted.json

--planted: the Layer-0 variant (alpha = 1, objective kl) against coord on planted tiny pairs, both
from the same pair seeds (an exact pair scan) with the same budget, stopping at the trigger's kl.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair-seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3, help="search seeds per driver")
    ap.add_argument("--metric", default="target")
    ap.add_argument("--threshold", type=float, default=8.0)
    ap.add_argument("--budget", type=int, default=4000, help="candidates per run")
    ap.add_argument("--pool-top", type=int, default=64)
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--out", default="bench/results/gcg-trained0.json")
    ap.add_argument("--drivers", default="gcg,coord,beam")
    ap.add_argument("--planted", action="store_true", help="Layer-0 gcg vs coord on planted pairs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.planted:
        return planted(args.out)

    from l0score.analysis.weight_diff import analyze
    from l0score.judge.fullmodel import FullModelOptions, FullModelScorer
    from l0score.judge.profile import load_targets, profile
    from l0score.judge.verify import verify
    from l0score.search import beam, coord
    from l0score.search.gcg import gcg
    from l0score.synthetic.trained import cached_trained_pair

    root = cached_trained_pair(seed=args.pair_seed)
    work = Path(tempfile.gettempdir()) / f"gcg-bench-pair{args.pair_seed}"  # analysis + profile, reused
    work.mkdir(parents=True, exist_ok=True)
    base, dormant = root / "base", root / "dormant"
    if not (work / "analysis.json").exists():
        analyze(base, dormant, work, plots=False, progress=False)
    if not (work / "profile.json").exists():
        profile(base, dormant, out=work)
    seeds = json.loads((work / "analysis.json").read_text())["seed_tokens"][: args.pool_top]
    target = load_targets(work / "profile.json", 1)[0]
    scorer = FullModelScorer(base, dormant, FullModelOptions(metrics=("kl", "js"), target_ids=(target["token_ids"][0],)))
    pool = torch.tensor(sorted(seeds))
    truth = json.loads((root / "trigger.json").read_text())["trigger_ids"]  # for the report only

    drivers = {
        "gcg": lambda kw: gcg(scorer, steps=200, topk=16, batch=48, restarts=1, **kw),
        "coord": lambda kw: coord(scorer, restarts=100, max_sweeps=8, **kw),
        "beam": lambda kw: beam(scorer, width=8, **kw),
    }
    rows = []
    for name in args.drivers.split(","):
        run = drivers[name]
        for seed in range(args.runs):
            before = scorer.evaluations
            kw = dict(length=args.length, objective=args.metric, pool=pool, progress=False, seed=seed, max_repeat=1,
                      budget=args.budget, threshold=args.threshold, calibrate=1)
            start = time.perf_counter()
            out = run(kw)
            seconds = time.perf_counter() - start
            results = out.results if hasattr(out, "results") else out
            best = results[0]
            rows.append({"driver": name, "seed": seed, "best_ids": best["token_ids"], "best_text": best["text"],
                         "score": best["score"], "kl": best.get("kl"), "reached": best["score"] >= args.threshold,
                         "is_trigger": best["token_ids"] == truth, "step": best["step"],
                         "steps": getattr(out, "steps", None),
                         "candidates": (scorer.evaluations - before) // len(scorer.contexts) - 1,
                         "seconds": round(seconds, 2)})
            print(rows[-1], flush=True)
    found = sorted({tuple(r["best_ids"]) for r in rows if r["reached"]})
    report = verify(base, dormant, [list(ids) for ids in found], progress=False, threads=1) if found else None
    flips = {tuple(r["token_ids"]): r["flip"] for r in report["results"]} if report else {}
    for r in rows:
        r["verify_flip"] = flips.get(tuple(r["best_ids"]))
    payload = {"pair": str(root), "pair_seed": args.pair_seed, "metric": args.metric, "target": target,
               "threshold": args.threshold, "budget": args.budget, "pool": pool.tolist(), "length": args.length,
               "load_average": os.getloadavg(), "torch_threads": 1, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1))
    print(f"-> {args.out}")


class Counting:
    """A scorer that counts the candidates it scores (coord returns no count of its own)."""

    def __init__(self, scorer):
        self.scorer, self.candidates = scorer, 0

    def __getattr__(self, name):
        return getattr(self.scorer, name)

    def score_batch(self, cands, *a, **k):
        scores = self.scorer.score_batch(cands, *a, **k)
        self.candidates += len(scores)
        return scores


def planted(out: str, budget: int = 20000) -> None:
    from l0score import Scorer
    from l0score.search import coord, pair_scan, seeds_from_pairs
    from l0score.search.gcg import gcg
    from l0score.synthetic import make_pair

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="gcg-planted-"))
    for seed, length in ((1, 2), (2, 3), (3, 5), (4, 3), (5, 4), (6, 4), (7, 5)):
        d = tmp / f"p{seed}"
        make_pair(d, size="tiny", seed=seed, trigger_length=length)
        scorer = Scorer.from_pretrained(d / "base", d / "dormant", template="chat")
        seeds = seeds_from_pairs(pair_scan(scorer, scorer.default_pool(), offsets=(1,), top=40, progress=False), 8)
        goal = float(scorer.score_batch([json.loads((d / "trigger.json").read_text())["trigger_ids"]]).kl[0])
        kw = dict(length=length, seeds=seeds, objective="kl", progress=False, max_repeat=1, seed=seed, budget=budget,
                  threshold=goal * (1 - 1e-5), calibrate=1)
        for name in ("coord", "gcg"):
            counting = Counting(scorer)
            start = time.perf_counter()
            if name == "coord":
                best = coord(counting, restarts=8, **kw)[0]
            else:
                best = gcg(counting, steps=20, topk=16, batch=64, restarts=8, alpha=1.0, **kw).best
            rows.append({"pair_seed": seed, "length": length, "driver": name, "trigger_kl": goal,
                         "best_kl": best["score"], "reached": best["score"] >= goal * (1 - 1e-5),
                         "candidates": counting.candidates - 1, "seconds": round(time.perf_counter() - start, 2)})
            print(rows[-1], flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"budget": budget, "load_average": os.getloadavg(), "torch_threads": 1,
                                     "runs": rows}, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
