"""`l0score hunt`: the whole cascade from two checkpoints to a ranked, verified list."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .args import add_pair_args, add_ray_arg, alphas, console, executor_of, resolve_pair


def register(sub) -> None:
    p = sub.add_parser("hunt", help="the cascade: analyze -> profile -> Layer-0 pool -> full-model search -> verify")
    add_pair_args(p)
    p.add_argument("--out", required=True, help="output directory (report.json, summary.md, report.html, stage files)")
    p.add_argument("--seconds", type=float, default=900.0, help="time budget of the whole hunt (default 900)")
    p.add_argument("--max-length", type=int, default=3, help="longest candidate in tokens (default 3)")
    p.add_argument("--probes", help="probe prompts, one per line (default: the objective's 3 built-in probes)")
    p.add_argument("--system-prompts", metavar="FILE",
                   help="system prompts, one a line (<default>: the template's own, <empty>): the full-model "
                        "objective averages over them and verify gives the flip rate per context")
    p.add_argument("--positions", choices=("before", "after", "both"), default="after",
                   help="placements the full-model search scores (verify checks both)")
    p.add_argument("--metric", default="kl", help="full-model objective: kl, js, tf_kl, hidden or a weighted sum")
    p.add_argument("--reply-tokens", type=int, default=8, help="k reply positions of tf_kl [8]")
    p.add_argument("--null-samples", type=int, default=32,
                   help="random candidates per length from the hunt's pool that a verified flip must beat [32]")
    p.add_argument("--max-pool", type=int, default=64, help="most Layer-0 pool tokens the full-model search takes")
    p.add_argument("--interactions", type=int, default=32, metavar="N",
                   help="Layer-0 route: the pool tokens the interaction scan pairs with every token (0: off)")
    p.add_argument("--partner-anchors", type=int, default=4, metavar="N",
                   help="Layer-0 route: the pool's first N words whose partners the partner scan ranks over "
                        "every token by the two models' divergence 1-2 layers on (0: off) [4]")
    p.add_argument("--attention-pairs", type=int, default=16, metavar="N",
                   help="Layer-0 route with attention changed past Layer 0: the attention-pair scan's best N "
                        "pairs, whose tokens lead the pool, in place of the interaction and partner scans (0: off) [16]")
    p.add_argument("--grow-words", type=int, default=24, metavar="N",
                   help="the pool's first N word-start pieces the base may grow into whole words, which the "
                        "exhaustive search then joins instead of tokens (0: off) [24]")
    p.add_argument("--no-profile", action="store_true", help="skip the behavioural profile")
    p.add_argument("--profile-inputs", type=int, default=60)
    p.add_argument("--amplify", type=alphas, default=(4.0,), metavar="ALPHA[,ALPHA...]",
                   help="the profile's logit-amplified sampling, whose payloads join its targets (docs/profile.md) [4]")
    p.add_argument("--no-amplify", action="store_true", help="profile without amplified sampling")
    p.add_argument("--verify-top", type=int, default=8)
    p.add_argument("--force", action="store_true",
                   help="hunt even when the base check says the base is a different model (or the dormant itself)")
    p.add_argument("--no-stop-on-fire", action="store_true",
                   help="run the exhaustive search even when the target route already made the dormant say its target")
    p.add_argument("--device", help="cpu, cuda, ... for the full models (default: cuda if available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (1 avoids oversubscription on a busy machine)")
    p.add_argument("--ascii", action="store_true", help="pool: only tokens whose text is ASCII")
    p.add_argument("--deny-regex", help="pool: drop tokens whose text matches")
    p.add_argument("--allow-template-tokens", action="store_true",
                   help="pool: also the chat template's role names, role tags and their newline (left out by default)")
    p.add_argument("--resume", action="store_true", help="continue the hunt in --out from its checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_ray_arg(p)
    p.set_defaults(func=run)


def options_from_args(args):
    from ..hunt import HuntOptions

    filters = {k: v for k, v in (("ascii_only", args.ascii), ("deny_regex", args.deny_regex),
                                 ("allow_template_tokens", args.allow_template_tokens)) if v}
    return HuntOptions(seconds=args.seconds, max_length=args.max_length, probes=args.probes,
                       system_prompts=args.system_prompts,
                       positions=("before", "after") if args.positions == "both" else (args.positions,),
                       metric=args.metric, reply_tokens=args.reply_tokens, null_samples=args.null_samples,
                       max_pool=args.max_pool, interactions=args.interactions, grow_words=args.grow_words,
                       partner_anchors=args.partner_anchors, attention_pairs=args.attention_pairs,
                       profile=not args.no_profile,
                       profile_inputs=args.profile_inputs, amplify=() if args.no_amplify else tuple(args.amplify),
                       verify_top=args.verify_top, device=args.device,
                       dtype=args.dtype, pool_filters=filters, seed=args.seed, stop_on_fire=not args.no_stop_on_fire,
                       force=args.force, threads=args.threads,
                       progress=not args.quiet)


def run(args) -> None:
    from ..hunt import hunt

    base, dormant = resolve_pair(args)
    try:
        report = hunt(base, dormant, args.out, options_from_args(args), resume=args.resume, say=say_stage,
                      executor=executor_of(args))
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: what was found is kept in {args.out}; "
                      "continue with the same command and --resume")
        raise SystemExit(130) from None
    _print_base_check(Path(args.out), report)
    print_report(report)


def _print_base_check(out: Path, report: dict) -> None:
    """The hunt's report starts with its base check and the route it took, and why."""
    from ..analysis.base_check import read_base_check
    from .base_check import print_result

    if (out / "base-check" / "base-check.json").is_file():
        print_result(read_base_check(out / "base-check"))
    bc = next((f for f in report["funnel"] if f["stage"] == "base_check"), None)
    if bc is not None:
        console.print(f"route: {bc['note']}", markup=False)


def say_stage(text: str) -> None:
    """The hunt's progress line for a stage, e.g. 'search (812 s of the budget left)'."""
    name, _, rest = text.partition(" ")
    console.print(f"[bold]{name}[/bold] {rest}")


def print_report(report: dict) -> None:
    funnel = Table(title="funnel")
    for col in ("stage", "candidates", "seconds", "note"):
        funnel.add_column(col)
    for f in report["funnel"]:
        funnel.add_row(f["stage"], str(f["candidates"]), str(f["seconds"]), f["note"])
    console.print(funnel)
    table = Table(title="ranked candidates")
    for col in ("rank", "candidate", "route", "score", "flip", "amplification"):
        table.add_column(col)
    for r in report["results"][:10]:
        v = r.get("verify") or {}
        table.add_row(str(r["rank"]), repr(r["text"]), r["route"], f"{r['score']:.4g}",
                      "[bold red]yes[/bold red]" if v.get("flip") else ("no" if v else ""),
                      f"{v['amplification']:.3g}" if "amplification" in v else "")
    console.print(table)
    console.print(f"report: {report['files'].get('summary')} and report.json in the output directory")
