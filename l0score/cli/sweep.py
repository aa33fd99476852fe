"""`l0score sweep`: every vocabulary token at the user-message slot, ranked by the first changed module
(and k layers on), plus the weight-delta projection (docs/first-module.md)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .args import add_pair_args, console, int_list, resolve_pair


def register(sub) -> None:
    p = sub.add_parser("sweep", help="rank every vocabulary token by the first changed module's difference "
                                     "(and k layers on); weight-delta projection alongside")
    add_pair_args(p)
    p.add_argument("--out", required=True, help="output directory (sweep.json, sweep.npz, projection.json)")
    p.add_argument("--location", default="auto",
                   help="first changed module: auto (the base check), mlp@L0, attn@L3, embed [auto]")
    p.add_argument("--depths", type=int_list, default=[1, 2, 3, 4], help="divergence depths k [1,2,3,4]")
    p.add_argument("--batch-size", type=int, default=256, help="tokens per forward [256]")
    p.add_argument("--top", type=int, default=50, help="tokens per ranking in sweep.json [50]")
    p.add_argument("--no-projection", action="store_true", help="skip the weight-delta projection")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep from DIR/sweep.ckpt.pt")
    p.add_argument("--backend", choices=("auto", "torch", "native", "triton"), default="auto",
                   help="layer L's attention difference (attn@L locations): torch reference math, the fused native "
                        "kernels (CPU) or Triton; auto = torch (docs/first-module.md)")
    p.set_defaults(func=run)


def location_of(base, dormant, location: str):
    """The first changed module: as given, or from the base check ("auto")."""
    from ..first_module import Location

    if location != "auto":
        return Location.parse(location)
    from ..analysis.base_check import BaseCheckOptions, base_check

    found = base_check(dormant, [base], BaseCheckOptions())
    if found.first_changed is None:
        raise ValueError(f"the dormant is identical to the base ({found.verdict}): there is nothing to sweep")
    return Location.from_first_changed(found.first_changed)


def first_module_backend(backend: str, loc) -> str:
    """--backend for the first-module scorer: auto is the torch path; a kernel backend applies to an
    attention location only (an MLP or embedding location runs torch, said on the console)."""
    if backend in ("auto", "torch"):
        return "torch"
    if loc.module != "attn":
        console.print(f"[yellow]note[/yellow]: --backend {backend} applies to attention; {loc.name} runs on torch")
        return "torch"
    return backend


def run(args) -> None:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..analysis.delta_projection import delta_projection
    from ..first_module import FirstModuleOptions, FirstModuleScorer
    from ..first_module.sweep import SweepOptions, sweep

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    base, dormant = resolve_pair(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loc = location_of(base, dormant, args.location)
    console.print(f"first changed module: {loc.name}")
    k = max(args.depths) if loc.module == "embed" and args.depths else 0
    scorer = FirstModuleScorer(base, dormant, FirstModuleOptions(location=loc, k=k, device=args.device, dtype=args.dtype,
                                                                 backend=first_module_backend(args.backend, loc)))
    bars = []  # made on the first batch, so that a bad option fails before a bar is drawn

    def progress(done, total):
        if not bars:
            bars.append(tqdm(desc="sweep", unit="tok", unit_scale=True, total=total))
        bars[0].n = done
        bars[0].refresh()

    opts = SweepOptions(depths=tuple(args.depths), batch_size=args.batch_size, checkpoint=out / "sweep.ckpt.pt",
                        resume=args.resume)
    try:
        res = sweep(scorer, opts, progress=progress)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: partial results are in {out}/sweep.ckpt.pt; continue with --resume")
        raise SystemExit(130) from None
    for bar in bars:
        bar.close()
    tok = scorer.pair.tokenizer
    rows = lambda r, name: [{"id": t, "text": tok.decode([t]), "value": float(r.values[name][r.token_ids == t][0])}
                            for t in r.top(name, args.top)]
    summary = {"location": loc.name, "vocabulary": len(res.token_ids), "seconds": res.seconds,
               "tokens_per_second": res.tokens_per_second, "rankings": {n: rows(res, n) for n in res.values}}
    (out / "sweep.json").write_text(json.dumps(summary, indent=2))
    np.savez(out / "sweep.npz", token_ids=res.token_ids.numpy(), **{n: v.numpy() for n, v in res.values.items()})
    (out / "sweep.ckpt.pt").unlink(missing_ok=True)
    for name in res.values:
        console.print(f"{name}: " + ", ".join(repr(r["text"]) for r in summary["rankings"][name][:10]))
    if not args.no_projection:
        t0 = time.perf_counter()
        proj = delta_projection(base, dormant)
        ptab = {"unchanged": proj.unchanged, "modules": proj.modules, "seconds": time.perf_counter() - t0,
                "rankings": {n: rows(proj, n) for n in proj.values}}
        (out / "projection.json").write_text(json.dumps(ptab, indent=2))
        for name in ("in", "out"):
            if name in proj.values:
                console.print(f"projection {name}: " + ", ".join(repr(r["text"]) for r in ptab["rankings"][name][:10]))
    console.print(f"{len(res.token_ids)} tokens in {res.seconds:.1f} s ({res.tokens_per_second:.0f}/s) -> {out}/sweep.json")
