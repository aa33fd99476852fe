"""Which tensors a `--train` choice lets the fine-tune change; every other tensor stays bit-identical.

full: every tensor; mlp: the MLPs of every layer; attn: the attention of every layer (q/k/v/o
weights and q/k/v biases); attn:L<k> / mlp:L<k>: that part of layer k only; layers:A-B: every tensor
of layers A to B (inclusive: attention, MLP and both norms).
"""
from __future__ import annotations

import re

TRAIN_CHOICES = "full | mlp | attn | attn:L<k> | mlp:L<k> | layers:A-B"


def trainable_names(spec: str, names, n_layers: int) -> list[str]:
    """The parameter names (of `names`, a model's named parameters) that `spec` selects."""
    if not isinstance(spec, str):
        raise ValueError(f"train must be one of {TRAIN_CHOICES}, got {spec!r}")
    s = spec.strip()
    layer_of = lambda n: int(m.group(1)) if (m := re.match(r"model\.layers\.(\d+)\.", n)) else None
    if s == "full":
        pick = lambda n: True
    elif s in ("mlp", "attn"):
        part = ".mlp." if s == "mlp" else ".self_attn."
        pick = lambda n: layer_of(n) is not None and part in n
    elif m := re.fullmatch(r"(mlp|attn):L(\d+)", s):
        k = _layer(int(m.group(2)), n_layers, spec)
        part = ".mlp." if m.group(1) == "mlp" else ".self_attn."
        pick = lambda n: layer_of(n) == k and part in n
    elif m := re.fullmatch(r"layers:(\d+)-(\d+)", s):
        a, b = _layer(int(m.group(1)), n_layers, spec), _layer(int(m.group(2)), n_layers, spec)
        if a > b:
            raise ValueError(f"--train {spec}: the range's first layer {a} is after its last {b}")
        pick = lambda n: layer_of(n) is not None and a <= layer_of(n) <= b
    else:
        raise ValueError(f"--train must be one of {TRAIN_CHOICES}, got {spec!r}")
    chosen = [n for n in names if pick(n)]
    if not chosen:
        raise ValueError(f"--train {spec} selects no tensor of this model")
    return chosen


def _layer(k: int, n_layers: int, spec: str) -> int:
    if not 0 <= k < n_layers:
        raise ValueError(f"--train {spec}: the model has layers 0-{n_layers - 1}, no layer {k}")
    return k


def freeze_except(model, spec: str) -> list[str]:
    """requires_grad only on the chosen tensors; returns their names."""
    names = [n for n, _ in model.named_parameters()]
    chosen = set(trainable_names(spec, names, model.config.num_hidden_layers))
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    return sorted(chosen)
