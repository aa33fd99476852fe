"""The documented Layer-0 flow at full Qwen2-7B Layer-0 scale, timed per stage (docs/search.md).

    python bench/layer0_flow.py PAIR_DIR [PAIR_DIR ...] [--out bench/results/layer0_flow.json]
                                [--table-dtype bfloat16] [--threads 2]

Each PAIR_DIR is a `l0score make-pair --size qwen2-7b-l0` output (base/, dormant/, trigger.json; the
trigger is read only to grade the results). Per pair:
  analyze   analyze(..., layer0_only=True)                      (l0score analyze --layer0-only)
  load      Scorer.from_pretrained with the token table already cached (a first, untimed load
            in a subprocess builds it: table build excluded, cached load included)
  beam      beam on the focus heads from the analysis' seed tokens, grown on both sides,
            metric head_max_sum, at the trigger's length       (search beam --heads-from --seeds-from)
  coord     coord on the focus heads started from beam's best 4 (search coord --seeds BEAM.jsonl)
  stage     layer0_stage(scorer, analysis): the hunt's entry point, trigger length not given
Graded: the trigger first (beam, coord, stage) and every planted pair adjacent and in order.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def grade(ids, trigger) -> dict:
    pairs_in_order = all(any(ids[i:i + 2] == [a, b] for i in range(len(ids) - 1))
                         for a, b in zip(trigger, trigger[1:]))
    return {"first": ids, "trigger_first": ids == trigger, "pairs_adjacent_in_order": pairs_in_order}


def one_pair(d: Path, table_dtype: str) -> dict:
    import torch

    from l0score import Scorer
    from l0score.analysis.weight_diff import analyze
    from l0score.search import beam, coord
    from l0score.search.layer0_stage import layer0_stage

    trig = json.loads((d / "trigger.json").read_text())
    trigger, length = trig["trigger_ids"], len(trig["trigger_ids"])
    subprocess.run([sys.executable, "-c", f"from l0score import Scorer; Scorer.from_pretrained({str(d / 'base')!r}, "
                    f"{str(d / 'dormant')!r}, table_dtype={table_dtype!r})"], check=True)  # table build, untimed
    row = {"pair": str(d), "trigger": trigger, "length": length, "heads": sorted({p["head"] for p in trig["pairs"]}),
           "seconds": {}}
    t = time.perf_counter()
    analysis = analyze(d / "base", d / "dormant", d / "bench-analysis", plots=False, progress=False, layer0_only=True)
    row["seconds"]["analyze"] = time.perf_counter() - t
    row["focus_heads"] = analysis["focus_heads"]
    row["trigger_seed_ranks"] = [analysis["seed_tokens"].index(x) + 1 if x in analysis["seed_tokens"] else None
                                 for x in trigger]
    t = time.perf_counter()
    scorer = Scorer.from_pretrained(d / "base", d / "dormant", table_dtype=table_dtype)
    row["seconds"]["load"] = time.perf_counter() - t
    focus = scorer.with_heads(analysis["focus_heads"])
    seeds = [[x] for x in analysis["seed_tokens"][:16]]
    kw = dict(length=length, objective="head_max_sum", progress=False, max_repeat=1)
    t = time.perf_counter()
    grown = beam(focus, width=8, seeds=seeds, **kw)
    row["seconds"]["beam"] = time.perf_counter() - t
    row["beam"] = grade(grown[0]["token_ids"], trigger)
    t = time.perf_counter()
    polished = coord(focus, restarts=4, seeds=[r["token_ids"] for r in grown[:4]], **kw)
    row["seconds"]["coord"] = time.perf_counter() - t
    row["coord"] = grade(polished[0]["token_ids"], trigger)
    row["seconds"]["flow"] = sum(row["seconds"][k] for k in ("analyze", "load", "beam", "coord"))
    t = time.perf_counter()
    staged = layer0_stage(scorer, analysis)
    row["seconds"]["stage"] = time.perf_counter() - t
    row["stage_steps"] = staged.seconds
    row["stage"] = grade(staged.candidates[0]["token_ids"], trigger)
    row["stage"]["trigger_in_pool_top"] = max((staged.pool.index(x) + 1 if x in staged.pool else 10**9)
                                              for x in trigger)
    row["load_avg"] = os.getloadavg()
    del scorer, focus
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pairs", nargs="+")
    p.add_argument("--out", default="bench/results/layer0_flow.json")
    p.add_argument("--table-dtype", default="bfloat16", choices=("float32", "bfloat16"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for d in args.pairs:
        rows.append(one_pair(Path(d), args.table_dtype))
        print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps({"rows": rows, "machine": platform.processor() or platform.machine(),
                                   "cpus": os.cpu_count(), "args": vars(args)}, indent=1))
    print(table(rows))
    return 0


def table(rows) -> str:
    lines = ["| pair | L | heads | focus | seed ranks | analyze s | load s | beam s | coord s | flow s | "
             "beam first | coord first | stage s | stage first | load avg |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|---|---|---:|---|---|"]
    for r in rows:
        s = r["seconds"]
        mark = lambda g: "trigger" if g["trigger_first"] else ("pairs in order" if g["pairs_adjacent_in_order"] else "no")
        lines.append(f"| {Path(r['pair']).name} | {r['length']} | {r['heads']} | {r['focus_heads']} | "
                     f"{r['trigger_seed_ranks']} | {s['analyze']:.0f} | {s['load']:.0f} | {s['beam']:.0f} | "
                     f"{s['coord']:.0f} | {s['flow']:.0f} | {mark(r['beam'])} | {mark(r['coord'])} | "
                     f"{s['stage']:.0f} | {mark(r['stage'])} | {r['load_avg'][0]:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
