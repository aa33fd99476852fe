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
Each stage records wall seconds and this process's CPU seconds (all threads): on a shared machine
the CPU time says what the stage costs, the wall time what it took under that load.
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


class Clock:
    """Wall and process CPU seconds per named stage."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def start(self):
        self._w, self._c = time.perf_counter(), time.process_time()

    def stop(self, name):
        self.wall[name], self.cpu[name] = time.perf_counter() - self._w, time.process_time() - self._c


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
           "load_avg_start": os.getloadavg()}
    clock = Clock()
    clock.start()
    analysis = analyze(d / "base", d / "dormant", d / "bench-analysis", plots=False, progress=False, layer0_only=True)
    clock.stop("analyze")
    row["focus_heads"] = analysis["focus_heads"]
    row["trigger_seed_ranks"] = [analysis["seed_tokens"].index(x) + 1 if x in analysis["seed_tokens"] else None
                                 for x in trigger]
    clock.start()
    scorer = Scorer.from_pretrained(d / "base", d / "dormant", table_dtype=table_dtype)
    clock.stop("load")
    focus = scorer.with_heads(analysis["focus_heads"])
    seeds = [[x] for x in analysis["seed_tokens"][:16]]
    kw = dict(length=length, objective="head_max_sum", progress=False, max_repeat=1)
    clock.start()
    grown = beam(focus, width=8, seeds=seeds, **kw)
    clock.stop("beam")
    row["beam"] = grade(grown[0]["token_ids"], trigger)
    clock.start()
    polished = coord(focus, restarts=4, seeds=[r["token_ids"] for r in grown[:4]], **kw)
    clock.stop("coord")
    row["coord"] = grade(polished[0]["token_ids"], trigger)
    clock.start()
    staged = layer0_stage(scorer, analysis)
    clock.stop("stage")
    for times in (clock.wall, clock.cpu):
        times["flow"] = sum(times[k] for k in ("analyze", "load", "beam", "coord"))
    row["seconds"], row["cpu_seconds"] = clock.wall, clock.cpu
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
    lines = ["| pair | L | planted heads | focus | trigger seed ranks | analyze | load | beam | coord | flow | "
             "beam first | coord first | stage | stage first | load avg |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|---|---|---:|---|---|"]
    mark = lambda g: "trigger" if g["trigger_first"] else ("pairs in order" if g["pairs_adjacent_in_order"] else "no")
    for r in rows:
        w, c = r["seconds"], r["cpu_seconds"]
        cell = lambda k: f"{w[k]:.0f} ({c[k]:.0f})"
        lines.append(f"| {Path(r['pair']).name} | {r['length']} | {r['heads']} | {r['focus_heads']} | "
                     f"{r['trigger_seed_ranks']} | {cell('analyze')} | {cell('load')} | {cell('beam')} | "
                     f"{cell('coord')} | {cell('flow')} | {mark(r['beam'])} | {mark(r['coord'])} | "
                     f"{cell('stage')} | {mark(r['stage'])} | {r['load_avg_start'][0]:.0f}-{r['load_avg'][0]:.0f} |")
    lines.append("\nseconds: wall (process CPU, both threads)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
