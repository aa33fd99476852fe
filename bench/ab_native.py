"""A/B timing of two builds of l0score._native in one process, interleaved rep by rep.

On a shared, loaded machine two separate benchmark runs are minutes apart and their load differs;
here both kernels score the same batch and the same beam step on the same table, alternating, so
they see the same load. Usage:

    python bench/ab_native.py --other /path/to/old/_native.cpython-*.so --base B --dormant D [--reps 3]

Prints, per build, the median candidates/s of score_batch (the `bench/run.py` setting: ~30-token
chat prefix, 8-token candidates, 5-token suffix, all heads, fp32 table) and extensions/s of
score_extensions (default chat template, cached prefixes of 0, 2, 4, 7 tokens, the whole pool).
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import statistics
import time

import numpy as np


def load_other(path: str):
    loader = importlib.machinery.ExtensionFileLoader("l0score_other._native", path)
    spec = importlib.util.spec_from_file_location("l0score_other._native", path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", required=True, help="the other build's _native .so (B); A is the installed one")
    ap.add_argument("--base", required=True)
    ap.add_argument("--dormant", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=20000)
    ap.add_argument("--table-dtype", default="float32")
    args = ap.parse_args()

    from l0score import ModelPair, Scorer, Template, _native
    from l0score.backends import native as native_backend
    from l0score.benchmark import EXTENSION_PREFIXES, bench_template, candidates

    builds = {"installed": _native, "other": load_other(args.other)}
    pair = ModelPair.load(args.base, args.dormant)
    tpl30 = bench_template(pair.tokenizer, 30)
    scorer = Scorer(pair, backend="native", table=True, table_dtype=args.table_dtype, template=tpl30)
    cands = candidates(pair, args.candidates, 8, seed=0)
    pool = scorer.default_pool()
    rng = np.random.default_rng(0)
    prefixes = {c: rng.choice(pool.numpy(), c).tolist() for c in EXTENSION_PREFIXES}
    chat = Template.chat(pair.tokenizer)
    for mod in builds.values():  # warm-up both: page-in, contexts, thread pool
        native_backend._native = mod
        scorer.score_batch(cands[:2048])
        scorer.score_extensions([prefixes[0]], pool, template=chat)
    rates = {name: {"score_batch": [], "extensions": []} for name in builds}
    loads = [os.getloadavg()[0]]
    for _ in range(args.reps):
        for name, mod in builds.items():
            native_backend._native = mod
            t = time.perf_counter()
            scorer.score_batch(cands)
            rates[name]["score_batch"].append(len(cands) / (time.perf_counter() - t))
            t = time.perf_counter()
            for c in EXTENSION_PREFIXES:
                scorer.score_extensions([prefixes[c]], pool, template=chat)
            rates[name]["extensions"].append(len(EXTENSION_PREFIXES) * len(pool) / (time.perf_counter() - t))
        loads.append(os.getloadavg()[0])
    native_backend._native = _native
    print(f"load average (1 min) during the run: {min(loads):.1f} .. {max(loads):.1f}")
    for name, r in rates.items():
        print(f"{name:<10} score_batch {statistics.median(r['score_batch']):10,.0f} cand/s  "
              f"extensions {statistics.median(r['extensions']):10,.0f} /s   "
              f"(reps: {', '.join(f'{x:,.0f}' for x in r['score_batch'])} | "
              f"{', '.join(f'{x:,.0f}' for x in r['extensions'])})")


if __name__ == "__main__":
    main()
