"""`l0score score`: score candidates given as ids, text or a file, print a table, write JSON."""
from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from .args import (add_pair_args, add_ray_arg, add_scoring_args, console, executor_of, int_list, make_scorer,
                   read_candidates)


def register(sub) -> None:
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
    p.set_defaults(func=run)


def _candidates(args, tok) -> list[list[int]]:
    candidates = [list(ids) for ids in args.ids or []]
    for text in args.text or []:
        if tok is None:
            raise ValueError("--text needs a tokenizer in the model directory; use --ids")
        candidates.append(tok.encode(text, add_special_tokens=False))
    if args.file:
        candidates += read_candidates(args.file, tok)
    if not candidates:
        raise ValueError("nothing to score: give --ids, --text or --file")
    return candidates


def run(args) -> None:
    scorer = make_scorer(args)
    tok = scorer.pair.tokenizer
    candidates = _candidates(args, tok)
    executor = executor_of(args)
    if executor is not None:
        scorer = executor.scorer(scorer)
    records = scorer.score_batch(candidates).to_records()
    for rec, ids in zip(records, candidates):
        rec["token_ids"] = ids
        rec["text"] = tok.decode(ids) if tok is not None else None
    order = sorted(range(len(records)), key=lambda b: -records[b]["kl"])
    _print_table(records, order, scorer, args.top)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"template": scorer.template.name, "region": scorer.region,
                                              "baseline": scorer.baseline_kind, "results": records}, indent=1))
        console.print(f"scores written to {args.out}")
    if args.plot:
        from ..analysis.heatmaps import candidate_heatmap

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        Path(args.plot).write_bytes(candidate_heatmap(scorer, candidates[order[0]]).png())
        console.print(f"dS heatmaps of {candidates[order[0]]} written to {args.plot}")


def _print_table(records, order, scorer, top: int) -> None:
    table = Table(title=f"{len(records)} candidates, template {scorer.template.name}, region {scorer.region}")
    for col in ("rank", "text", "ids", "max_abs", "kl", "argmax (h,i,j)") + tuple(f"band r={r}" for r in scorer.offsets):
        table.add_column(col)
    for rank, b in enumerate(order[:top], 1):
        r = records[b]
        a = r["argmax"]
        table.add_row(str(rank), repr(r["text"]), str(r["token_ids"]), f"{r['max_abs']:.4f}", f"{r['kl']:.4f}",
                      f"({a['head']},{a['i']},{a['j']})", *(f"{v:.4f}" for v in r["band"].values()))
    console.print(table)
