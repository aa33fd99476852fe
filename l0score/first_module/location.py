"""Where a fine-tune starts: the first changed module, as (layer, module).

module is "attn" (layer L's input_layernorm or q/k/v/o projections changed first), "mlp" (layer L's
post_attention_layernorm or gate/up/down projections changed first; its attention is unchanged) or
"embed" (the embedding changed: no layer is shared, both models run from their own embeddings).
The base check (l0score.analysis.base_check) finds it from the checkpoints; `Location.check` verifies
a given location against the loaded models, so a wrong one is a clear error, not silently wrong scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MODULES = ("attn", "mlp", "embed")
_ATTN = ("input_layernorm", "self_attn")
_MLP = ("post_attention_layernorm", "mlp")


@dataclass(frozen=True)
class Location:
    layer: int
    module: str

    def __post_init__(self):
        if self.module not in MODULES:
            raise ValueError(f"module must be one of {', '.join(MODULES)}, got {self.module!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer must be a layer index >= 0, got {self.layer!r}")
        if self.module == "embed" and self.layer != 0:
            raise ValueError("module 'embed' (the embedding changed) has no layer; use layer 0")

    @property
    def name(self) -> str:
        """What results say in `objective`: "mlp@L0", "attn@L3", "embed"."""
        return "embed" if self.module == "embed" else f"{self.module}@L{self.layer}"

    @classmethod
    def parse(cls, text: str) -> "Location":
        """"mlp@L0", "attn@3", "embed"."""
        text = str(text).strip()
        if text == "embed":
            return cls(0, "embed")
        module, _, layer = text.partition("@")
        layer = layer.upper().removeprefix("L")
        if not layer.isdigit():
            raise ValueError(f"location must look like 'mlp@L0', 'attn@L3' or 'embed', got {text!r}")
        return cls(int(layer), module)

    @classmethod
    def from_first_changed(cls, first) -> "Location":
        """The location of the base check's `first_changed` (an object or its JSON dict): a changed
        input norm starts the attention module, a changed post-attention norm the MLP."""
        get = (lambda k: first.get(k)) if isinstance(first, dict) else (lambda k: getattr(first, k, None))
        module, layer, tensors = get("module"), get("layer"), " ".join(get("tensors") or ())
        if module == "embed":
            return cls(0, "embed")
        if module == "norm" and layer is not None:
            module = "mlp" if "post_attention_layernorm" in tensors else "attn"
        if module not in ("attn", "mlp") or layer is None:
            raise ValueError(f"the first change is in {get('label') or module}: everything before the output "
                             "head is shared, so there is no first module to score")
        return cls(int(layer), module)

    def check(self, base, dormant) -> None:
        """Raise ValueError unless everything before this location is bit-identical in the two
        transformers models and the located module itself changed."""
        n = base.config.num_hidden_layers
        if self.layer >= n:
            raise ValueError(f"layer {self.layer} is beyond the models' {n} layers")
        if self.module == "embed":
            if _same(base.model.embed_tokens, dormant.model.embed_tokens):
                raise ValueError("location 'embed': the embedding did not change")
            return
        shared = [("embed_tokens", base.model.embed_tokens, dormant.model.embed_tokens)]
        for i in range(self.layer):
            shared.append((f"layer {i}", base.model.layers[i], dormant.model.layers[i]))
        lb, ld = base.model.layers[self.layer], dormant.model.layers[self.layer]
        if self.module == "mlp":
            shared += [(f"layer {self.layer} {p}", getattr(lb, p), getattr(ld, p)) for p in _ATTN]
        for what, mb, md in shared:
            if not _same(mb, md):
                raise ValueError(f"location {self.name}: {what} differs between the models, so the states "
                                 f"entering {self.name} are not shared (run the base check for the first change)")
        own = _ATTN if self.module == "attn" else _MLP
        if all(_same(getattr(lb, p), getattr(ld, p)) for p in own):
            raise ValueError(f"location {self.name}: that module is identical in both models")


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def first_changed(base, dormant) -> Location | None:
    """The first changed module of two loaded transformers models, or None when nothing changed
    (a convenience for tests and scripts; the hunt takes it from the base check)."""
    if not _same(base.model.embed_tokens, dormant.model.embed_tokens):
        return Location(0, "embed")
    for i, (lb, ld) in enumerate(zip(base.model.layers, dormant.model.layers)):
        for module, parts in (("attn", _ATTN), ("mlp", _MLP)):
            if not all(_same(getattr(lb, p), getattr(ld, p)) for p in parts):
                return Location(i, module)
    return None
