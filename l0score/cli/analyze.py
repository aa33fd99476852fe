"""`l0score analyze`: the weight-diff analysis (per-tensor deltas, per-head spectra, seed tokens)."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .args import add_pair_args, console, resolve_pair


def register(sub) -> None:
    from ..analysis.weight_diff import SVD_MODES

    p = sub.add_parser("analyze", help="weight-diff analysis: per-tensor deltas, per-head spectra, seed tokens",
                       description="Stream over every tensor of both checkpoints (bounded memory) and write "
                                   "DIR/analysis.json (focus_heads, seed_tokens, ...), DIR/summary.md and PNG plots.")
    add_pair_args(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--top-tokens", type=int, default=64, help="number of seed tokens (default 64)")
    p.add_argument("--focus", type=int, help="number of focus heads (default: cut at the largest score gap)")
    p.add_argument("--directions", type=int, default=4, help="right-singular vectors per block for token alignment")
    p.add_argument("--offsets", type=int, default=128, help="relative offsets in the bias-only template (default 128)")
    p.add_argument("--svd", choices=SVD_MODES, default="auto",
                   help="auto: full spectrum where affordable, randomized for the largest tensors")
    p.add_argument("--key-offsets", type=int, default=4,
                   help="key-role seeds: offsets 1..N behind the changed queries (default 4)")
    p.add_argument("--layer0-only", action="store_true",
                   help="read only the tensors the Layer-0 analysis needs, norms without whole-tensor spectra "
                        "(focus heads and seeds unchanged; much faster)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..analysis.weight_diff import analyze

    base, dormant = resolve_pair(args)
    res = analyze(base, dormant, args.out, top_tokens=args.top_tokens, n_focus=args.focus, directions=args.directions,
                  offsets=args.offsets, svd=args.svd, plots=not args.no_plots, progress=not args.quiet,
                  key_offsets=args.key_offsets, layer0_only=args.layer0_only)
    l0 = res["layer0"]
    _print_base_check(Path(args.out))
    table = Table(title="most concentrated 2-D deltas")
    for col in ("parameter", "‖Δ‖", "rel", "σ1", "top-16", "rank90", "eff. rank", "method"):
        table.add_column(col)
    for t in sorted((t for t in res["tensors"] if t["svd"]), key=lambda t: -t["svd"]["top16_energy"])[:8]:
        s = t["svd"]
        table.add_row(t["name"].removeprefix("model."), f"{t['delta_norm']:.4g}", _fmt(t["rel_norm"]), f"{s['sigma1']:.4g}",
                      f"{100 * s['top16_energy']:.1f}%", str(s["rank90"]), f"{s['effective_rank']:.0f}",
                      s["method"])
    console.print(table)
    if res.get("layer0_zero_by_construction"):  # the heads' table would rank zeros
        console.print(f"analysis written to {Path(args.out) / 'analysis.json'} and summary.md ({res['seconds']:.1f} s); "
                      "no focus heads or seed tokens: Layer-0 scores are zero by construction (see above)")
        return
    table = Table(title=f"Layer-0 heads (focus: {l0['focus_heads']})")
    for col in ("rank", "head", "kv", "score", "q σ1", "q top-16", "k σ1"):
        table.add_column(col)
    for r in l0["heads"][:8]:
        table.add_row(str(r["rank"]), str(r["head"]), str(r["kv_head"]), f"{r['score']:.4g}", f"{r['q_sigma1']:.4g}",
                      f"{100 * r['q_top16_energy']:.1f}%", f"{r['k_sigma1']:.4g}")
    console.print(table)
    table = Table(title="seed tokens")
    for col in ("rank", "id", "token", "score", "block", "role"):
        table.add_column(col)
    for rank, t in enumerate(l0["seed_token_details"][:12], 1):
        table.add_row(str(rank), str(t["id"]), repr(t["text"]), f"{t['score']:.4f}", t["block"], t["role"])
    console.print(table)
    console.print(f"analysis written to {Path(args.out) / 'analysis.json'} and summary.md ({res['seconds']:.1f} s); "
                  f"use it with `l0score search ... --seeds-from {Path(args.out) / 'analysis.json'}`")


def _print_base_check(out: Path) -> None:
    """The base check analyze ran first (its verdict, first change, and the zero-by-construction note)."""
    from ..analysis.base_check import read_base_check
    from .base_check import print_result

    if (out / "base-check.json").is_file():
        print_result(read_base_check(out))


def _fmt(v, spec=".4g"):
    return "-" if v is None else format(v, spec)
