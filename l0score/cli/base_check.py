"""`l0score base-check`: what the fine-tune changed, and whether the base is the right one."""
from __future__ import annotations

import sys

from rich.table import Table

from .args import console, demo_pair_dir


def register(sub) -> None:
    p = sub.add_parser("base-check", help="which tensors the fine-tune changed, the first changed module, and "
                                          "whether the base is the right one (run this first)",
                       description="Compare the dormant with one or more candidate bases tensor by tensor (bit "
                                   "identity, ‖Δ‖/‖W_base‖, max |Δ|; streaming, bounded memory) and write "
                                   "DIR/base-check.json and DIR/base-check.md. Several bases are ranked and the "
                                   "most plausible is chosen.")
    p.add_argument("--dormant", help="dormant model directory or cached hub id (default: the demo pair)")
    p.add_argument("--base", nargs="+", help="one or more candidate bases (default: the demo pair's base)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..analysis.base_check import BaseCheckOptions, base_check, write_base_check

    if bool(args.base) != bool(args.dormant):
        raise ValueError("give both --dormant and --base, or neither (the demo pair)")
    if args.base:
        dormant, bases = args.dormant, args.base
    else:
        pair = demo_pair_dir()
        dormant, bases = str(pair / "dormant"), [str(pair / "base")]
    live = not args.quiet and sys.stderr.isatty()  # a rewritten line; in a log it would only be noise
    result = base_check(dormant, bases, BaseCheckOptions(progress=_progress if live else None))
    if live:
        print(file=sys.stderr)
    paths = write_base_check(result, args.out)
    print_result(result.to_json())
    console.print(f"written: {paths['json']} and {paths['md']} ({result.seconds:.1f} s)")


def _progress(i: int, n_bases: int, j: int, n_tensors: int, name: str) -> None:
    print(f"\rbase {i + 1}/{n_bases}: tensor {j + 1}/{n_tensors} {name[:60]:<60}", end="", file=sys.stderr, flush=True)


def print_result(data: dict) -> None:
    """The verdict, its evidence, the first change and the kind table (shared by analyze and hunt)."""
    from ..analysis.base_check import LAYER0_ZERO_NOTE

    colour = {"fine-tune": "green", "identical": "yellow", "different model": "red"}.get(data["verdict"], "white")
    fc = data["first_changed"]
    console.print(f"base check: [bold {colour}]{data['verdict']}[/bold {colour}] against {data['base']}; "
                  f"first changed: [bold]{fc['label'] if fc else 'nothing'}[/bold]")
    for e in data["evidence"]:
        console.print(f"  - {e}", markup=False)
    if data["layer0_scores_zero"] and data["verdict"] == "fine-tune":
        console.print(f"  [yellow]{LAYER0_ZERO_NOTE}[/yellow]")
    table = Table(title="changed tensors by kind")
    for col in ("kind", "identical", "changed", "median ‖Δ‖/‖W‖"):
        table.add_column(col)
    for kind, g in data["groups"].items():
        med = g["median_rel_norm"]
        table.add_row(kind, str(g["identical"]), str(g["changed"]), "-" if med is None else f"{med:.3g}")
    console.print(table)
    if len(data["candidates"]) > 1:
        table = Table(title="candidate bases, most plausible first")
        for col in ("rank", "base", "verdict", "changed", "median ‖Δ‖/‖W‖", "first changed"):
            table.add_column(col)
        for c in data["candidates"]:
            med, f = c["median_rel_norm"], c["first_changed"]
            table.add_row(str(c["rank"]), c["base"], c["verdict"], f"{c['n_changed']} of {c['n_tensors']}",
                          "-" if med is None else f"{med:.3g}", f["label"] if f else "-")
        console.print(table)
