"""`l0score demo`: a real search on the tiny demo pair (or, with --hunt, the hunt on a trained one)."""
from __future__ import annotations

from rich.table import Table

from .args import console


def register(sub) -> None:
    p = sub.add_parser("demo", help="search the tiny demo pair and show the planted trigger found")
    p.add_argument("--n-random", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("auto", "torch", "native", "triton"), default="auto")
    p.add_argument("--out", help="results JSONL, or with --hunt the hunt's directory (default: under the cache directory)")
    p.add_argument("--hunt", action="store_true", help="run the hunt on a small trained backdoor instead (built once, cached)")
    p.add_argument("--seconds", type=float, default=600.0, help="the hunt's time budget with --hunt")
    p.set_defaults(func=run)


def run(args) -> None:
    if args.hunt:
        from ..demo import run_hunt_demo
        from .hunt import print_report, say_stage

        res = run_hunt_demo(seconds=args.seconds, out=args.out, say=say_stage)
        print_report(res["report"])
        verdict = f"ranked #{res['trigger_rank']}" if res["trigger_rank"] else "not found"
        console.print(f"planted trigger {res['trigger_text']!r}: {verdict}; the hunt's report is in {res['out']}")
        return
    from ..demo import run_demo

    _print(run_demo(n_random=args.n_random, seed=args.seed, backend=args.backend, out=args.out, progress=True))


def _print(s: dict) -> None:
    table = Table(title=f"beam search on the demo pair, lengths {s['lengths'][0]}-{s['lengths'][-1]}: top "
                        f"{len(s['top'])} by z (chat template, backend {s['backend']})")
    for col in ("rank", "text", "token_ids", "kl", "z", ""):
        table.add_column(col)
    for n, r in enumerate(s["top"], 1):
        mark = "<- planted trigger" if r["token_ids"] == s["trigger_ids"] else ""
        table.add_row(str(n), repr(r["text"]), str(r["token_ids"]), f"{r['kl']:.4f}", f"{r['z']:.1f}", mark)
    console.print(table)
    verdict = f"found at rank {s['found_rank']}" if s["found_rank"] else "NOT found"
    console.print(f"planted trigger {s['trigger_text']!r} {s['trigger_ids']}: {verdict}, in {s['seconds']:.1f} s "
                  f"(pair scan of {s['pool_size']}^2 token pairs + {s['candidates_scored']} beam candidates)")
    console.print(f"for scale: its kl {s['trigger_kl']:.3f} vs the best of {s['random_n']} random candidates "
                  f"{s['random_kl_max']:.3f}; results in {s['results_file']}")
