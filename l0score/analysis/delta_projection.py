"""Weight-delta vocabulary projection: which tokens a fine-tune's weight changes point at, with no
forward pass (like analyze's alignment seeds, beyond Layer 0's attention).

Input side (every matrix that reads the residual stream: gate/up of an MLP, q/k/v of attention): the
delta dW of the matrices of one module, stacked, has top-r right singular directions v_i with
singular values s_i. A token t enters as its normalised embedding scaled by the module's own input
norm, x_t = w_ln * e_t / rms(e_t), and scores ||dW_r x_t|| = sqrt(sum_i s_i^2 (v_i . x_t)^2): how
strongly the top of the change responds to that token's direction. Exact for a token's own state at
layer 0 only (later states mix context in), so this is a proposal, not a measurement.
Output side (an MLP's down projection): the top-r left singular directions u_i of dW_down, pushed
through the final norm's weight and the unembedding, give each token's logit change per unit of
activation along u_i; a token scores max_i s_i |U_t . (w_final * u_i)| (a direction's sign is arbitrary).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from ..core.checkpoint import list_tensors, resolve_model_dir
from ..core.model_pair import ModelPair
from ..first_module.ranking import Rankings

_LAYER = re.compile(r"model\.layers\.(\d+)\.")
SIDES = ("in", "out")


@dataclass
class DeltaProjectionOptions:
    """layers: which layers' modules to project [every layer with a changed module]
    rank: singular directions per module [8]
    pool: token ids ranked [every real token, template-structural and special tokens excluded]
    """

    layers: tuple[int, ...] | None = None
    rank: int = 8
    pool: tuple[int, ...] | None = None


@dataclass
class DeltaProjectionResult(Rankings):
    """values: "mlp{L}_in", "mlp{L}_out", "attn{L}_in" per projected module, and "in" / "out": each
    token's best rank over the modules of that side (as a negative number, so higher is better)."""

    modules: list[str] = field(default_factory=list)
    unchanged: bool = False  # no projected tensor differs between the models


class _Tensors:
    """Named float32 tensors of one checkpoint, read on demand from its safetensors files."""

    def __init__(self, model_dir):
        self.entries = list_tensors(resolve_model_dir(model_dir))

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        with safe_open(entry.file, framework="pt") as f:
            return f.get_tensor(name).float()


def delta_projection(base, dormant, options: DeltaProjectionOptions | None = None) -> DeltaProjectionResult:
    o = options or DeltaProjectionOptions()
    if o.rank < 1:
        raise ValueError(f"rank must be >= 1 singular direction, got {o.rank}")
    tb, td = _Tensors(base), _Tensors(dormant)
    pool = ModelPair.load(base, dormant).real_token_ids() if o.pool is None else torch.as_tensor(list(o.pool))
    embed = tb["model.embed_tokens.weight"][pool]
    x = embed / embed.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-30)
    head = tb["lm_head.weight"][pool] if "lm_head.weight" in tb else embed
    final = tb["model.norm.weight"]
    layers = sorted({int(m.group(1)) for n in tb.entries if (m := _LAYER.match(n))}) if o.layers is None else list(o.layers)
    values, modules = {}, []
    for layer in layers:
        for module, names, ln in _MODULES:
            deltas = [_delta(tb, td, f"model.layers.{layer}.{module}.{n}.weight") for n in names]
            if all(d is None for d in deltas):
                continue
            w = tb[f"model.layers.{layer}.{ln}.weight"]
            stacked = torch.cat([d for d in deltas if d is not None])
            values[f"{module.split('_')[-1]}{layer}_in"] = _input_side(stacked, x * w, o.rank)
            modules.append(f"{module} {layer}")
        down = _delta(tb, td, f"model.layers.{layer}.mlp.down_proj.weight")
        if down is not None:
            values[f"mlp{layer}_out"] = _output_side(down, head, final, o.rank)
    if not values:
        return DeltaProjectionResult(pool, {}, [], unchanged=True)
    for side in SIDES:
        names = [k for k in values if k.endswith("_" + side)]
        if names:
            ranks = torch.stack([_ranks(values[k]) for k in names])
            values[side] = -ranks.min(0).values.float()
    return DeltaProjectionResult(pool, values, modules)


_MODULES = (("self_attn", ("q_proj", "k_proj", "v_proj"), "input_layernorm"),
            ("mlp", ("gate_proj", "up_proj"), "post_attention_layernorm"))


def _delta(tb: _Tensors, td: _Tensors, name: str) -> torch.Tensor | None:
    if name not in tb:
        return None
    d = td[name] - tb[name]
    return d if d.abs().max() > 0 else None


def _top(delta: torch.Tensor, rank: int):
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return u[:, :rank].float(), s[:rank].float(), vh[:rank].float()


def _input_side(delta: torch.Tensor, inputs: torch.Tensor, rank: int) -> torch.Tensor:
    _, s, vh = _top(delta, rank)
    return ((inputs @ vh.T) * s).norm(dim=-1)


def _output_side(down: torch.Tensor, head: torch.Tensor, final: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, _ = _top(down, rank)
    return ((head @ (final[:, None] * u)).abs() * s).amax(-1)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based rank of each entry, largest first."""
    order = torch.argsort(v, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, len(v) + 1)
    return ranks
