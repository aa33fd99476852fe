"""What every command's parser and handler share: the console, pair and scoring options, list parsing.

Only cli/ imports this module; the library takes plain values (paths, lists, options dataclasses)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

console = Console()


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", help="base model directory or cached hub id (default: the demo pair)")
    p.add_argument("--dormant", help="dormant model directory or cached hub id (default: the demo pair)")


def add_scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", choices=("raw", "chat"), default="chat", help="candidate placement (default chat)")
    p.add_argument("--system", help="system message for the chat template (default: the template's own)")
    p.add_argument("--before", default="", help="user text before the candidate (chat template)")
    p.add_argument("--after", default="", help="user text after the candidate (chat template)")
    p.add_argument("--heads", type=int_list, help="comma-separated head ids to score (default all)")
    p.add_argument("--region", choices=("candidate", "all"), default="candidate")
    p.add_argument("--baseline", choices=("none", "bias"), default="none")
    p.add_argument("--offsets", type=int_list, default=[], help="band offsets, e.g. 1,2,3")
    p.add_argument("--backend", choices=("auto", "torch", "native", "triton"), default="auto")


def add_ray_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const="auto", metavar="auto|ADDRESS",
                   help="run on a Ray cluster: 'auto' (the default with a bare --ray) joins the cluster of this "
                        "machine or starts a local one; host:port joins that head (docs/cluster.md)")


def executor_of(args):
    """Where the work runs: None (this process) without --ray, else the cluster's executor. Ray is
    imported only here and only with --ray."""
    if not getattr(args, "ray", None):
        return None
    from ..cluster import make_executor

    return make_executor(args.ray)


def resolve_pair(args) -> tuple[str, str]:
    """--base/--dormant, or the demo pair (made on first use)."""
    if bool(args.base) != bool(args.dormant):
        raise ValueError("give both --base and --dormant, or neither (the demo pair)")
    if args.base:
        return args.base, args.dormant
    pair_dir = demo_pair_dir()
    return str(pair_dir / "base"), str(pair_dir / "dormant")


def demo_pair_dir():
    """The tiny demo pair, made on first use (imported here so the parser needs no synthetic)."""
    from ..synthetic.cached import demo_pair

    return demo_pair()


def say_stderr(text: str) -> None:
    """Progress notes that must not mix with a command's output."""
    print(text, file=sys.stderr, flush=True)


def make_scorer(args):
    from ..core.model_pair import ModelPair
    from ..core.template import Template
    from ..scorer import Scorer

    base, dormant = resolve_pair(args)
    pair = ModelPair.load(base, dormant)
    if args.template == "chat":
        template = Template.chat(pair.tokenizer, system=args.system, before=args.before, after=args.after)
    else:
        template = Template.raw()
    # with --ray the workers score on their nodes' tables: this process needs none of its own
    table = False if getattr(args, "ray", None) else None
    return Scorer(pair, backend=args.backend, template=template, heads=args.heads, region=args.region,
                  baseline=args.baseline, offsets=args.offsets, table=table)


def read_candidates(path: str, tokenizer) -> list[list[int]]:
    """JSONL with token_ids (search output) or plain lines of comma-separated ids / text."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            out.append(list(json.loads(line)["token_ids"]))
        elif all(ch.isdigit() or ch in ", " for ch in line):
            out.append(int_list(line))
        elif tokenizer is None:
            raise ValueError(f"{path}:{n}: text candidate but the model has no tokenizer")
        else:
            out.append(tokenizer.encode(line, add_special_tokens=False))
    return out


def alphas(text: str) -> tuple[float, ...]:
    import argparse

    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
