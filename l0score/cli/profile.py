"""`l0score profile`: what the dormant says more than the base on ordinary prompts, as target strings."""
from __future__ import annotations

from .args import add_pair_args, alphas, console, int_list, resolve_pair


def register(sub) -> None:
    from ..judge.profile import ProfileOptions

    d = ProfileOptions()
    p = sub.add_parser("profile", help="what the dormant says more than the base on ordinary prompts, "
                                       "inverted into target strings")
    add_pair_args(p)
    p.add_argument("--out", required=True, help="output directory (profile.json, summary.md, profile.png)")
    p.add_argument("--inputs", type=int, default=d.inputs, help=f"prompts with a random candidate [{d.inputs}]")
    p.add_argument("--probes", help="probe prompts, one per line (default: verify's 8)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cand-lengths", type=int_list, default=list(d.cand_lengths),
                   help="random candidate lengths, comma-separated [1,2,3]")
    p.add_argument("--reply-tokens", type=int, default=d.reply_tokens, help=f"k reply positions [{d.reply_tokens}]")
    p.add_argument("--top-first", type=int, default=d.top_first, help=f"tokens expanded into targets [{d.top_first}]")
    p.add_argument("--max-target-tokens", type=int, default=d.max_target_tokens)
    p.add_argument("--min-preference", type=float, default=d.min_preference)
    p.add_argument("--patience", type=int, default=d.patience,
                   help="tokens in a row below --min-preference a target grows through [%(default)s]")
    p.add_argument("--position", choices=("before", "after", "both"), default="both")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=d.dtype)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--threads", type=int, help="torch CPU threads (1 avoids oversubscription on a busy machine)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted profile in --out from its checkpoint")
    p.add_argument("--amplify", type=alphas, default=(), metavar="ALPHA[,ALPHA...]",
                   help="amplified sampling (docs/first-module.md): logits_d + a(logits_d - logits_b) and W_d + a(W_d - W_b); "
                        "its payloads join the targets [off]")
    p.add_argument("--amplify-forms", default="logits,weights", help="logits and/or weights [logits,weights]")
    p.add_argument("--amplify-samples", type=int, default=d.amplify_samples,
                   help=f"sampled generations per prompt and setting, besides the greedy one [{d.amplify_samples}]")
    p.set_defaults(func=run)


def run(args) -> None:
    import torch

    from ..judge.profile import POSITIONS, ProfileOptions, profile

    base, dormant = resolve_pair(args)
    opts = ProfileOptions(inputs=args.inputs, probes=args.probes, seed=args.seed, cand_lengths=tuple(args.cand_lengths),
                          reply_tokens=args.reply_tokens, top_first=args.top_first,
                          max_target_tokens=args.max_target_tokens, min_preference=args.min_preference, patience=args.patience,
                          positions=POSITIONS if args.position == "both" else (args.position,),
                          device=args.device, dtype=args.dtype, batch_size=args.batch_size, amplify=tuple(args.amplify),
                          amplify_forms=tuple(f.strip() for f in args.amplify_forms.split(",") if f.strip()),
                          amplify_samples=args.amplify_samples)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        result = profile(base, dormant, opts, out=args.out, progress=True, resume=args.resume)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: the prompts measured so far are kept in {args.out}; "
                      "continue with the same command and --resume")
        raise SystemExit(130) from None
    top = ", ".join(f"{r['text']!r} (z {r['z']:.1f})" for r in result["tokens"][:8])
    console.print(f"top up-weighted tokens: {top}")
    for n, t in enumerate(result["targets"][:5], 1):
        console.print(f"target {n}: {t['text']!r} score {t['score']:.1f} ({len(t['token_ids'])} tokens)")
    amp = result.get("amplified")
    if amp is not None:
        for p in amp["payloads"][:5]:
            console.print(f"amplified payload {p['said']!r}: {p['count']} generations ({p['frequency']:.0%}), "
                          f"{', '.join(p['settings'])}")
        if amp["statement"]:
            console.print(amp["statement"])
    console.print(f"profile written to {args.out}/profile.json (summary.md, profile.png)")
