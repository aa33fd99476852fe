"""`l0score search {pairs,beam,mcts,coord}`: the drivers on the command line (DESIGN §5)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.table import Table

from ..cli_args import add_pair_args, add_scoring_args, console, make_scorer


def register_cli(sub) -> None:
    p = sub.add_parser("search", help="search for trigger candidates (pairs, beam, mcts, coord)")
    drivers = p.add_subparsers(dest="driver", required=True)
    for name, help_ in (("pairs", "exact scan over (query token, key token, offset)"),
                        ("beam", "beam search by incremental extension"),
                        ("mcts", "Monte Carlo tree search (PUCT) over prefixes"),
                        ("coord", "exact coordinate ascent with random restarts")):
        d = drivers.add_parser(name, help=help_)
        add_pair_args(d)
        add_scoring_args(d)
        _common(d)
        d.set_defaults(func=run_search)
        if name == "pairs":
            d.add_argument("--top", type=int, default=50, help="triples kept overall and per head")
            d.set_defaults(offsets=[1, 2, 3])
        else:
            _sequence_options(d)
        if name == "beam":
            d.add_argument("--width", type=int, default=16)
        if name == "mcts":
            d.add_argument("--branch", type=int, default=16, help="children kept per expanded node")
            d.add_argument("--batch", type=int, default=8, help="leaves evaluated together (virtual loss)")
            d.add_argument("--c-puct", type=float, default=1.5)
            d.add_argument("--rollout", choices=("greedy", "random"), default="greedy")
        if name == "coord":
            d.add_argument("--restarts", type=int, default=4)
            d.add_argument("--max-sweeps", type=int, default=8)


def _common(d) -> None:
    d.add_argument("--out", required=True, help="results, JSONL, best first")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--seconds", type=float, help="time budget")
    d.add_argument("--checkpoint-every", type=float, default=30.0, help="seconds between checkpoints")
    d.add_argument("--resume", action="store_true", help="continue from OUT.ckpt.json")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    g = d.add_argument_group("token pool (specials and padding rows are always excluded)")
    g.add_argument("--ascii", action="store_true", help="only tokens whose text is ASCII")
    g.add_argument("--printable", action="store_true", help="only tokens whose text is printable")
    g.add_argument("--no-whitespace", action="store_true", help="drop whitespace-only tokens")
    g.add_argument("--allow-regex", help="keep tokens whose text matches")
    g.add_argument("--deny-regex", help="drop tokens whose text matches")
    g.add_argument("--allow-list", help="file of allowed token ids")
    g.add_argument("--pool-roundtrip", action="store_true", help="only tokens that decode/encode to themselves")


def _sequence_options(d) -> None:
    d.add_argument("--metric", default="kl", help="max_abs, kl, band, or a weighted sum 'max_abs=1,kl=0.5'")
    d.add_argument("--length", type=int, required=True, help="candidate length in tokens")
    d.add_argument("--budget", type=int, help="candidates to score at most")
    d.add_argument("--threshold", type=float, help="stop once the best score reaches this")
    d.add_argument("--top", type=int, default=20, help="rows in the printed table")
    d.add_argument("--keep", type=int, default=100, help="results written to --out")
    d.add_argument("--roundtrip", choices=("report", "search", "off"), default="report",
                   help="drop results whose text does not re-tokenize to the same ids (report, the default), "
                        "also prune such prefixes during beam search (search), or keep everything (off)")
    d.add_argument("--seeds", default="pairs",
                   help="'pairs' (best token pairs from an exact scan), 'none', or a JSONL/ids file of prefixes")
    d.add_argument("--seeds-from", help="analysis.json from `l0score analyze`: its seed_tokens start the search")
    d.add_argument("--n-seeds", type=int, default=16)
    d.add_argument("--max-repeat", type=int, default=2, help="max occurrences of one token in a candidate")
    d.add_argument("--minimize", action="store_true", help="also report each top result with tokens dropped while the score holds")


def run_search(args) -> None:
    from . import beam, build_pool, coord, mcts, minimize, pair_scan, seeds_from_pairs

    scorer = make_scorer(args)
    pool = build_pool(scorer.pair, ascii_only=args.ascii, printable_only=args.printable,
                      no_whitespace_only=args.no_whitespace, allow_regex=args.allow_regex,
                      deny_regex=args.deny_regex, allow_list=args.allow_list, roundtrip=args.pool_roundtrip)
    console.print(f"pool: {len(pool)} tokens; template {scorer.template.name} "
                  f"({len(scorer.template.prefix_ids)}+{len(scorer.template.suffix_ids)} context tokens); "
                  f"backend {scorer.backend.name}")
    start = time.perf_counter()
    if args.driver == "pairs":
        scan = pair_scan(scorer, pool, offsets=args.offsets, top=args.top, progress=not args.quiet,
                         checkpoint=args.out + ".ckpt.json", resume=args.resume, seconds=args.seconds)
        _write_pairs(args.out, scan)
        _print_pairs(scan, args.top)
        console.print(f"pair scan of {len(pool)}^2 tokens x {len(args.offsets)} offsets x {len(scorer.heads)} heads "
                      f"in {time.perf_counter() - start:.1f} s -> {args.out}")
        return

    seeds = _seeds(args, scorer, pool, seeds_from_pairs, pair_scan)
    run_kw = dict(objective=args.metric, pool=pool, out=args.out, budget=args.budget, seconds=args.seconds,
                  threshold=args.threshold, checkpoint_every=args.checkpoint_every, resume=args.resume,
                  progress=not args.quiet, keep=args.keep, roundtrip=args.roundtrip, seed=args.seed,
                  max_repeat=args.max_repeat)
    if args.driver == "beam":
        results = beam(scorer, length=args.length, width=args.width, seeds=seeds, **run_kw)
    elif args.driver == "mcts":
        results = mcts(scorer, length=args.length, branch=args.branch, batch=args.batch, c_puct=args.c_puct,
                       rollout=args.rollout, seeds=seeds, **run_kw)
    else:
        results = coord(scorer, length=args.length, restarts=args.restarts, max_sweeps=args.max_sweeps,
                        seeds=seeds, **run_kw)
    if args.minimize:
        for rec in results[: args.top]:
            rec["minimized"] = minimize(scorer, rec["token_ids"], args.metric)
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in results))
    _print_results(results, args, time.perf_counter() - start)


def _seeds(args, scorer, pool, seeds_from_pairs, pair_scan) -> list[list[int]] | None:
    if args.length <= 0:
        raise ValueError(f"--length must be a positive number of tokens, got {args.length}")
    if args.seeds_from:
        from ..analysis.weight_diff import load_seed_tokens

        return [[t] for t in load_seed_tokens(args.seeds_from)[: args.n_seeds]]
    if args.seeds == "none":
        return None
    if args.seeds == "pairs":
        if args.length < 2:
            return None
        scan = pair_scan(scorer, pool, offsets=(1,), top=max(args.n_seeds * 4, 16), progress=not args.quiet)
        return seeds_from_pairs(scan, args.n_seeds)
    from ..cli_args import read_candidates

    return read_candidates(args.seeds, scorer.pair.tokenizer)


def _write_pairs(out: str, scan: dict) -> None:
    lines = [{"scope": "overall", "rank": n, **row} for n, row in enumerate(scan["top"], 1)]
    for head, rows in scan["per_head"].items():
        lines += [{"scope": "head", "rank": n, **row} for n, row in enumerate(rows, 1)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(json.dumps(line) + "\n" for line in lines))


def _print_pairs(scan: dict, top: int) -> None:
    table = Table(title=f"top {min(top, 20)} (query token, key token, offset) triples by |dS|"
                        + ("" if scan.get("complete", True) else " (partial scan)"))
    for col in ("rank", "query", "key", "offset", "head", "dS"):
        table.add_column(col)
    for n, row in enumerate(scan["top"][:20], 1):
        table.add_row(str(n), f"{row['query_token']} {row.get('query_text', '')!r}",
                      f"{row['key_token']} {row.get('key_text', '')!r}", str(row["offset"]), str(row["head"]),
                      f"{row['value']:+.4f}")
    console.print(table)


def _print_results(results: list[dict], args, seconds: float) -> None:
    table = Table(title=f"{args.driver}: top {min(args.top, len(results))} by {args.metric}")
    for col in ("rank", "text", "token_ids", "score", "z", "max_abs", "kl", "step"):
        table.add_column(col)
    for n, r in enumerate(results[: args.top], 1):
        table.add_row(str(n), repr(r["text"]), str(r["token_ids"]), f"{r['score']:.4f}", f"{r['z']:.1f}",
                      f"{r['max_abs']:.4f}", f"{r['kl']:.4f}", str(r["step"]))
    console.print(table)
    for r in results[: args.top]:
        if "minimized" in r and r["minimized"]["removed"]:
            m = r["minimized"]
            console.print(f"{r['token_ids']} -> {m['token_ids']} keeps {m['score']:.4f} of {m['original_score']:.4f}")
    console.print(f"{len(results)} results in {seconds:.1f} s -> {args.out}")
