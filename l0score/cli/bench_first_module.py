"""`l0score bench --first-module`: the first-module scorer against the full-model objective on the same
candidates, and the vocabulary sweep's rate (l0score/benchmark_first_module.py)."""
from __future__ import annotations

import argparse
import sys


def first_module_main(argv=None, prog: str = "l0score bench --first-module", default_out=None) -> int:
    from .. import benchmark_first_module as bfm

    d = bfm.FirstModuleBenchOptions(base="", dormant="")
    ap = argparse.ArgumentParser(prog=prog, description=bfm.__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="base model directory (a real control's base/)")
    ap.add_argument("--dormant", required=True, help="dormant model directory")
    ap.add_argument("--location", help="first changed module (default: from the base check)")
    ap.add_argument("--candidates", type=int, default=d.n_first, help=f"candidates timed on the first-module scorer [{d.n_first}]")
    ap.add_argument("--full-candidates", type=int, default=d.n_full, help=f"candidates timed on the full models [{d.n_full}]")
    ap.add_argument("--length", type=int, default=d.length, help=f"candidate tokens [{d.length}]")
    ap.add_argument("--k", type=int, default=d.k, help=f"divergence depth also timed, 0 = skip [{d.k}]")
    ap.add_argument("--sweep-tokens", type=int, default=d.sweep_tokens, help=f"vocabulary slice timed [{d.sweep_tokens}]")
    ap.add_argument("--reps", type=int, default=d.repeats, help=f"timed repetitions after a warm-up (best) [{d.repeats}]")
    ap.add_argument("--threads", type=int, default=d.threads, help=f"torch CPU threads [{d.threads}]")
    ap.add_argument("--out", help="directory for first_module_*.json/.md (default: bench's results directory)")
    args = ap.parse_args(argv)
    try:
        for name in ("candidates", "full_candidates", "length", "sweep_tokens", "reps", "threads"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        opts = bfm.FirstModuleBenchOptions(base=args.base, dormant=args.dormant, location=args.location,
                                           n_first=args.candidates, n_full=args.full_candidates, length=args.length,
                                           k=args.k, sweep_tokens=args.sweep_tokens, repeats=args.reps,
                                           threads=args.threads, out_dir=args.out or default_out,
                                           command=" ".join([prog, *(argv or [])]))
        res = bfm.run_first_module_bench(opts, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(bfm.markdown(res))
    return 0
