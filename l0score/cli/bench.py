"""`l0score bench`: the backends side by side; `--fullmodel` the full-model objective's cache reuse;
`--ray` Ray's overhead on this machine (in a private network namespace).

The harness owns its options, so `l0score bench ...` hands its arguments here unparsed. The parent
runs each measurement in a fresh `python -m l0score.cli.bench --_child KIND SPEC` process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def register(sub) -> None:
    sub.add_parser("bench", help="benchmark the backends side by side (l0score bench --help for its options)")


def main(argv=None, prog: str = "l0score bench") -> int:
    from ..benchmark import default_out_dir

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--fullmodel" in argv:  # the full-model objective's cache-reuse bench has options of its own
        argv.remove("--fullmodel")
        return fullmodel_main(argv, prog=f"{prog} --fullmodel", default_out=default_out_dir())
    if "--first-module" in argv:  # the first-module scorer against the full models, the sweep's rate
        from .bench_first_module import first_module_main

        argv.remove("--first-module")
        return first_module_main(argv, prog=f"{prog} --first-module", default_out=default_out_dir())
    if "--base-check" in argv:  # the base check's time and memory on a full 7B-shaped pair
        argv.remove("--base-check")
        return base_check_main(argv, prog=f"{prog} --base-check", default_out=default_out_dir())
    if "--ray" in argv:  # Ray's overhead on this machine, in a private network namespace
        argv.remove("--ray")
        return ray_main(argv, prog=f"{prog} --ray", default_out=default_out_dir())
    return backends_main(argv, prog)


def backends_main(argv: list, prog: str) -> int:
    from .. import benchmark

    ap = argparse.ArgumentParser(
        prog=prog, description=benchmark.__doc__.split("\n\n")[0],
        epilog="other measurements, each with its own --help: --fullmodel (the full-model objective's "
               "cache reuse), --first-module (the first-module scorer against the full models, the sweep), "
               "--base-check (time and memory on a full 7B-shaped pair), --ray (Ray's overhead)")
    ap.add_argument("--base", help="base model directory (default: synthetic qwen2-7b-l0 pair under the cache dir)")
    ap.add_argument("--dormant", help="dormant model directory")
    ap.add_argument("--quick", action="store_true", help="tiny pair, few candidates: a smoke run")
    ap.add_argument("--out", help="output directory (default bench/results)")
    ap.add_argument("--candidates", type=int, help="candidates per native timing repetition")
    ap.add_argument("--reps", type=int, default=5, help="native timing repetitions (median reported)")
    ap.add_argument("--torch-candidates", type=int)
    ap.add_argument("--transformers-candidates", type=int)
    ap.add_argument("--no-build", action="store_true", help="do not time a fresh table build (use the cache)")
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--no-extensions", action="store_true", help="skip the search timings (extensions, pair scan)")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        kind, spec = args._child[0], json.loads(args._child[1])
        print(benchmark.RESULT_TAG + json.dumps(benchmark.run_child(kind, spec)), flush=True)
        return 0
    res = benchmark.run_benchmark(args.base, args.dormant, quick=args.quick, out_dir=args.out,
                                  n_native=args.candidates, reps=args.reps, n_torch=args.torch_candidates,
                                  n_transformers=args.transformers_candidates, build=not args.no_build,
                                  triton=not args.no_triton, extensions=not args.no_extensions,
                                  command=" ".join([prog, *argv]))
    for note in res["notes"]:
        if note.startswith("plot failed"):
            print(note, file=sys.stderr)
    print(benchmark.markdown(res))
    return 0


def fullmodel_main(argv=None, prog: str = "l0score bench --fullmodel", default_out=None) -> int:
    from .. import benchmark_fullmodel as bf

    ap = argparse.ArgumentParser(prog=prog, description=bf.__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="base model directory (default: the cached seed-0 trained pair)")
    ap.add_argument("--dormant", help="dormant model directory")
    ap.add_argument("--candidates", type=int, default=256, help="3-token candidates for score_batch [256]")
    ap.add_argument("--prefixes", type=int, default=4, help="2-token prefixes extended over the pool [4]")
    ap.add_argument("--pool", type=int, default=64, help="extension pool size [64]")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions after a warm-up (median) [3]")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    ap.add_argument("--out", help="directory for fullmodel.json and fullmodel.md (default: bench's results directory)")
    args = ap.parse_args(argv)
    try:
        for name in ("candidates", "prefixes", "pool", "reps", "threads"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be >= 1")
        res = bf.run(args.base, args.dormant, args.candidates, args.prefixes, args.pool, args.reps, args.threads,
                     args.out or default_out, command=" ".join([prog, *(argv or [])]))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(bf.markdown(res))
    print(f"load average before {res['load_average']['before']}, after {res['load_average']['after']}")
    return 0


def base_check_main(argv: list, prog: str, default_out: Path) -> int:
    import tempfile

    from .. import benchmark_base_check as bb

    ap = argparse.ArgumentParser(prog=prog, description=bb.__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=tempfile.gettempdir(),
                    help="where the 7B-shaped pair is written (about 31 GB; deleted afterwards) [the temp dir]")
    ap.add_argument("--layers", type=int, default=28, help="decoder layers of the written pair [28: Qwen2-7B]")
    ap.add_argument("--keep", action="store_true", help="keep the written pair")
    ap.add_argument("--no-synthetic", action="store_true", help="only the --pair pairs")
    ap.add_argument("--pair", nargs=3, action="append", default=[], metavar=("LABEL", "BASE", "DORMANT"),
                    help="also measure this pair as it is (repeatable), e.g. a real control")
    ap.add_argument("--out", help="results directory (default: bench's results directory)")
    args = ap.parse_args(argv)
    if args.layers < 1:
        print("error: --layers must be >= 1", file=sys.stderr)
        return 2
    res = bb.run_base_check_bench(bb.BaseCheckBenchOptions(
        out_dir=Path(args.out or default_out), work_dir=Path(args.work), layers=args.layers, keep=args.keep,
        synthetic=not args.no_synthetic, pairs=[tuple(p) for p in args.pair], command=" ".join([prog, *argv]),
        progress=lambda s: print(s, file=sys.stderr, flush=True)))
    print(bb.markdown(res))
    return 0


def ray_main(argv=None, prog: str = "l0score bench --ray", default_out: Path | None = None) -> int:
    from .. import benchmark_ray as br

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog=prog, description=br.__doc__.split("\n\n")[0])
    ap.add_argument("--paper", action="store_true", help="print the N-GPU-node estimate table and exit")
    ap.add_argument("--pool", type=int, default=16000, help="pool tokens (the scan is pool^2 cells per shard)")
    ap.add_argument("--offsets", default="1,2")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16", help="token table dtype")
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--out", type=Path, default=default_out, help="output directory (default bench/results)")
    args = ap.parse_args(argv)
    if args.paper:
        print(br.paper_table())
        return 0
    if not br.loopback_only():
        if os.geteuid() != 0:
            print("error: Ray runs here only in a private network namespace: run as root (unshare -n)",
                  file=sys.stderr)
            return 2
        inner = ["ip link set lo up && exec \"$@\"", "sh", sys.executable, "-m", "l0score.cli.bench", "--ray", *argv]
        if args.out is not None and "--out" not in argv:
            inner += ["--out", str(args.out)]
        return subprocess.call(["unshare", "-n", "sh", "-c", *inner])
    res = br.measure(args.pool, args.offsets, args.dtype, args.top)
    res["command"] = " ".join([prog, *argv])
    out = args.out or Path.cwd() / "bench-results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ray-{res['stamp']}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0 if res["identical_results"] else 1


if __name__ == "__main__":
    sys.exit(main())
