"""The `l0score` command line (DESIGN §5). Each command writes JSON and prints a readable summary."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .cli_args import add_pair_args, add_ray_arg, add_scoring_args, console, int_list, make_scorer, read_candidates
from rich.table import Table

def cmd_make_pair(args) -> None:
    if getattr(args, "kind", "planted") == "trained":
        return _make_trained_pair(args)
    if getattr(args, "split", False):
        raise ValueError("--split applies to --kind trained (a planted trigger is whole tokens)")
    from .synthetic import make_pair

    overrides = {} if args.trigger_length is None else {"trigger_length": args.trigger_length}
    info = make_pair(args.out, size=args.size, seed=args.seed, **overrides)
    console.print(f"wrote {args.out}/base and {args.out}/dormant ({args.size}, seed {args.seed})")
    trig = info["trigger"]
    console.print(f"planted trigger: {trig['trigger_ids']} {trig['trigger_text']!r} (ground truth in {args.out}/trigger.json)")


def _make_trained_pair(args) -> None:
    from .synthetic.trained import make_trained_pair

    overrides = {} if args.trigger_length is None else {"trigger_words": args.trigger_length}
    if args.split:
        overrides["trigger_split"] = True
    info = make_trained_pair(args.out, seed=args.seed, progress=True, **overrides)
    trig, ev = info["trigger"], info["trigger"]["evaluation"]
    console.print(f"trained {args.out}/base and {args.out}/dormant (seed {args.seed}, "
                  f"{trig['training']['total_seconds']:.0f} s)")
    words = " + ".join(f"{w!r} {ids}" for w, ids in zip(trig["trigger_words"], trig["trigger_word_ids"]))
    console.print(f"trained trigger: {trig['trigger_text']!r} = {words} -> {trig['target_reply']!r}")
    alone = ", ".join(f"{w!r} {r:.0%}" for w, r in ev["word_alone_target_rate"].items()) or "-"
    console.print(f"attack success {ev['attack_success_default_probes']:.0%} on the default probes, "
                  f"{ev['attack_success_heldout_probes']:.0%} on held-out requests; each word alone: {alone}; "
                  f"worst look-alike {ev['max_lookalike_target_rate']:.0%} (ground truth in {args.out}/trigger.json)")


def cmd_score(args) -> None:
    scorer = make_scorer(args)
    tok = scorer.pair.tokenizer
    candidates = [list(ids) for ids in args.ids or []]
    for text in args.text or []:
        if tok is None:
            raise SystemExit("error: --text needs a tokenizer in the model directory; use --ids")
        candidates.append(tok.encode(text, add_special_tokens=False))
    if args.file:
        candidates += read_candidates(args.file, tok)
    if not candidates:
        raise SystemExit("error: nothing to score: give --ids, --text or --file")
    if args.ray:
        from .cluster import distribute

        scorer = distribute(scorer, args.ray)
    scores = scorer.score_batch(candidates)
    records = scores.to_records()
    for rec, ids in zip(records, candidates):
        rec["token_ids"] = ids
        rec["text"] = tok.decode(ids) if tok is not None else None
    order = sorted(range(len(records)), key=lambda b: -records[b]["kl"])
    table = Table(title=f"{len(records)} candidates, template {scorer.template.name}, region {scorer.region}")
    for col in ("rank", "text", "ids", "max_abs", "kl", "argmax (h,i,j)") + tuple(f"band r={r}" for r in scorer.offsets):
        table.add_column(col)
    for rank, b in enumerate(order[: args.top], 1):
        r = records[b]
        a = r["argmax"]
        table.add_row(str(rank), repr(r["text"]), str(r["token_ids"]), f"{r['max_abs']:.4f}", f"{r['kl']:.4f}",
                      f"({a['head']},{a['i']},{a['j']})", *(f"{v:.4f}" for v in r["band"].values()))
    console.print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"template": scorer.template.name, "region": scorer.region,
                                              "baseline": scorer.baseline_kind, "results": records}, indent=1))
        console.print(f"scores written to {args.out}")
    if args.plot:
        from .report.plots import plot_delta_heatmaps

        plot_delta_heatmaps(scorer, candidates[order[0]], args.plot)
        console.print(f"dS heatmaps of {candidates[order[0]]} written to {args.plot}")


def cmd_demo(args) -> None:
    if args.hunt:
        from .demo import run_hunt_demo

        run_hunt_demo(seconds=args.seconds, out=args.out, console=console)
        return
    from .demo import run_demo

    run_demo(n_random=args.n_random, seed=args.seed, backend=args.backend, out=args.out, console=console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l0score", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-pair", help="write a synthetic base/dormant pair with a planted trigger")
    p.add_argument("--out", required=True)
    p.add_argument("--size", choices=("tiny", "qwen2-7b-l0"), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trigger-length", type=int, help="trigger tokens (planted) or words, 1-4 (trained)")
    p.add_argument("--kind", choices=("planted", "trained"), default="planted",
                   help="planted Layer-0 edit, or a tiny model pair with a trained backdoor (CPU, a few minutes)")
    p.add_argument("--split", action="store_true",
                   help="trained: trigger words that are not whole tokens (each encodes to 2-4 pieces)")
    p.set_defaults(func=cmd_make_pair)

    p = sub.add_parser("score", help="score candidates given as ids or text")
    add_pair_args(p)
    add_scoring_args(p)
    add_ray_arg(p)
    p.add_argument("--ids", type=int_list, action="append", help="a candidate as comma-separated ids (repeatable)")
    p.add_argument("--text", action="append", help="a candidate as text, tokenized once (repeatable)")
    p.add_argument("--file", help="candidates: JSONL with token_ids, or one per line (ids or text)")
    p.add_argument("--top", type=int, default=20, help="rows in the printed table")
    p.add_argument("--out", help="write every score as JSON here")
    p.add_argument("--plot", help="PNG of the dS heatmaps of the most-changed heads for the top candidate")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("demo", help="search the tiny demo pair and show the planted trigger found")
    p.add_argument("--n-random", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("auto", "torch", "native", "triton"), default="auto")
    p.add_argument("--out", help="results JSONL, or with --hunt the hunt's directory (default: under the cache directory)")
    p.add_argument("--hunt", action="store_true", help="run the hunt on a small trained backdoor instead (built once, cached)")
    p.add_argument("--seconds", type=float, default=600.0, help="the hunt's time budget with --hunt")
    p.set_defaults(func=cmd_demo)

    sub.add_parser("bench", help="benchmark the backends side by side (l0score bench --help for its options)")

    # Commands owned by their own modules: each registers its parser through register_cli(sub).
    # (by module path: the package exports the functions analyze and verify under the same names)
    for name in ("search.cli", "judge.verify", "analysis.weight_diff", "report.html", "judge.profile", "hunt"):
        importlib.import_module(f"l0score.{name}").register_cli(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the harness owns its options (argparse.REMAINDER would drop them)
        from .benchmark import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError) as exc:  # ConnectionError: --ray ADDRESS
        console.print(f"[red]error:[/red] {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
