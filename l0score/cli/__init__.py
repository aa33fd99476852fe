"""The `l0score` command line: one module per command, each with `register(sub)` adding its parser and
a handler that turns the parsed arguments into a library call and prints a readable summary.

The library never parses arguments, prints or exits; this package is the only place that does
(docs/architecture.md, "Layers").
"""
from __future__ import annotations

import argparse
import sys

from rich.markup import escape

from . import analyze, base_check, bench, demo, hunt, make_pair, profile, report, score, search, sweep, verify
from .args import console

# parser order = `l0score --help` order
COMMANDS = (make_pair, score, demo, bench, base_check, search, verify, analyze, sweep, report, profile, hunt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l0score", description="Find hidden backdoor triggers in a fine-tuned "
                                     "model by comparing it with its base. Each command writes JSON and prints "
                                     "a readable summary.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the harness owns its options (argparse.REMAINDER would drop them)
        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError) as exc:  # ConnectionError: --ray ADDRESS
        # one unwrapped line whatever the terminal width: scripts and tests read it (soft_wrap), and the
        # message is shown as written (escape: a "[...]" in it is not rich markup)
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2
    return 0
