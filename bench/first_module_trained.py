"""Trained positive controls for the first-changed-module measurements, built when the real controls
are not available: the tiny trained control of l0score.synthetic.trained (its recipe, its corpus, its
held-out evaluation), with the dormant's fine-tune restricted to some parameters.

    python bench/first_module_trained.py --train full|mlp|attn:L1 --seed 0 --out DIR

"full" is the recipe as it is (every parameter: location "embed"); "mlp" trains only the MLPs (first
change: layer 0's MLP); "attn:L1" only layer 1's attention. The restriction freezes the other
parameters during the dormant's training (AdamW leaves parameters without gradients untouched, weight
decay included), so they stay bit-identical to the base. trigger.json records the attack's success.
"""
import argparse
import re

import torch


def keep_fn(train: str):
    if train == "full":
        return lambda name: True
    if train == "mlp":
        return lambda name: ".mlp." in name or "post_attention_layernorm" in name
    m = re.fullmatch(r"attn:L(\d+)", train)
    if m:
        layer = int(m.group(1))
        return lambda name: name.startswith(f"model.layers.{layer}.") and ("self_attn" in name or "input_layernorm" in name)
    raise ValueError(f"--train must be full, mlp or attn:L<k>, got {train!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dormant-steps", type=int, default=None)
    args = ap.parse_args()
    import l0score.synthetic.trained as trained

    keep, original = keep_fn(args.train), trained._train

    def restricted(model, data, steps, lr, cfg, seed, name, progress, tok):
        if name == "dormant":
            for n, p in model.named_parameters():
                p.requires_grad_(keep(n))
        try:
            return original(model, data, steps, lr, cfg, seed, name, progress, tok)
        finally:
            for p in model.parameters():
                p.requires_grad_(True)

    trained._train = restricted
    overrides = {} if args.dormant_steps is None else {"dormant_steps": args.dormant_steps}
    res = trained.make_trained_pair(args.out, seed=args.seed, progress=False, threads=1, **overrides)
    t = res["trigger"]
    print({k: t.get(k) for k in ("trigger_text", "trigger_ids")}, t.get("evaluation", {}).get("trigger", t.get("evaluation")))


if __name__ == "__main__":
    main()
