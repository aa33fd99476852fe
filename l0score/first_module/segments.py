"""Runs of consecutive decoder layers of one transformers Qwen2 model, started from hidden states.

A `Segment` is a view of layers [start, stop) of a loaded model: the same parameter tensors (no
copy), its own config (num_hidden_layers = stop - start), each attention's cache slot renumbered
from 0 and the final norm left out, so transformers' own `Qwen2Model.forward` (masks, RoPE, KV
cache) runs exactly those layers. The model's own forward is what the full-model objective runs,
so a segment chain reproduces it layer by layer.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class _Capture(nn.Module):
    """Stands in for an MLP: keeps its input, adds nothing to the residual stream."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x):
        self.seen = x
        return torch.zeros_like(x)


class Segment:
    """Layers [start, stop) of ``model``; ``attention_only`` keeps only the last layer's attention
    (its MLP replaced by a capture of the MLP's input: the mid-layer residual stream); ``eager`` runs
    transformers' eager attention, whose modules return their attention probabilities (the fused
    kernels do not)."""

    def __init__(self, model, start: int, stop: int, attention_only: bool = False, eager: bool = False):
        n = model.config.num_hidden_layers
        if not 0 <= start < stop <= n:
            raise ValueError(f"segment [{start}, {stop}) outside the model's {n} layers")
        inner = model.model
        view = copy.copy(inner)
        view._modules = dict(inner._modules)
        cfg = copy.deepcopy(inner.config)
        cfg.layer_types = list(cfg.layer_types[start:stop])
        cfg.num_hidden_layers = stop - start
        if eager:
            cfg._attn_implementation = "eager"
        view.config = cfg
        layers = [_renumbered(layer, j, cfg if eager else None) for j, layer in enumerate(inner.layers[start:stop])]
        self.capture = None
        if attention_only:
            self.capture = _Capture()
            last = layers[-1]
            last._modules["post_attention_layernorm"] = nn.Identity()
            last._modules["mlp"] = self.capture
        view._modules["layers"] = nn.ModuleList(layers)
        view._modules["norm"] = nn.Identity()
        self.view, self.start, self.stop = view, start, stop

    @torch.no_grad()
    def run(self, hidden: torch.Tensor | None, positions: torch.Tensor, cache=None, input_ids=None):
        """(output hidden states [B, n, d], the cache after them). ``input_ids`` instead of
        ``hidden`` starts from this model's embedding (only for a segment starting at layer 0)."""
        return self.forward(hidden, positions, cache, input_ids)

    def forward(self, hidden, positions, cache=None, input_ids=None, use_cache: bool = True):
        """`run` with autograd on (the gradient drivers' loss runs it with use_cache=False)."""
        if input_ids is not None and self.start != 0:
            raise ValueError("only a segment starting at layer 0 reads token ids")
        out = self.view(input_ids=input_ids, inputs_embeds=hidden, position_ids=positions,
                        use_cache=use_cache,
                        **{_cache_name(self.view): cache})
        hidden_out = self.capture.seen if self.capture is not None else out.last_hidden_state
        return hidden_out, getattr(out, _cache_name(self.view))


def _renumbered(layer: nn.Module, index: int, config=None) -> nn.Module:
    view = copy.copy(layer)
    view._modules = dict(layer._modules)
    attn = copy.copy(layer.self_attn)
    attn.layer_idx = index
    if config is not None:  # the attention picks its kernel from its own config at every call
        attn.config = config
    view._modules["self_attn"] = attn
    return view


def _cache_name(view) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(type(view).forward).parameters else "past_key_values"


def batch_cache(cache, batch: int):
    """A copy of a batch-1 prefix cache, repeated for a batch (the caller's cache stays intact)."""
    if cache is None:
        return None
    out = copy.deepcopy(cache)
    if batch > 1:
        out.batch_repeat_interleave(batch)
    return out
