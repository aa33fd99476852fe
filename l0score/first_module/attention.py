"""Attention first changed at layer L: base-vs-dormant dS of layer L on the trunk's shared states.

The Layer-0 reference math (l0score.core.reference) with hidden-state rows in place of embedding rows:
each model's input_layernorm, q/k projection (+ bias), half-split RoPE, S = q.k / sqrt(D), and the
same reductions (max_abs, head_max, kl, head_kl, band) with the same region handling. At layer L the
q/k of a position depend on its context, so there is no token table: q/k are projected on the fly
from the states. The prefix's keys (and, for region "all", its own rows' stats) are computed once.

backend "torch" runs that math here; "native" and "triton" give the same RowStats from the fused
Layer-0 kernels on the projected states (backends/layer_rows.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends import layer_rows
from ..core.reference import RowStats, rope_angles, rotate, score_rows


@dataclass
class _LayerQK:
    norm: torch.Tensor
    eps: float
    wq: torch.Tensor
    bq: torch.Tensor
    wk: torch.Tensor
    bk: torch.Tensor


@dataclass
class AttentionPrefix:
    keys: tuple[torch.Tensor, torch.Tensor]  # rotated prefix keys [p, KV, D], base and dormant
    stats: RowStats | None  # the prefix rows over their own cells (region "all"), None if p == 0
    length: int
    prepared: object = None  # the keys as the kernel backend reads them (None on the torch path)


class AttentionDifference:
    def __init__(self, base, dormant, layer: int, heads: tuple[int, ...], region: str, offsets: tuple[int, ...],
                 backend: str = "torch"):
        cfg = base.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.theta = _rope_theta(cfg)
        self.group = self.n_heads // self.n_kv
        self.region = region
        self.qk = [_layer_qk(m, layer) for m in (base, dormant)]
        device = self.qk[0].wq.device
        self.heads = torch.tensor(heads, device=device)
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)
        self.baseline = torch.zeros(len(heads), cfg.max_position_embeddings, device=device)
        shape = layer_rows.HeadShape(self.n_heads, self.n_kv, self.head_dim, self.theta, cfg.max_position_embeddings)
        self.kernel = layer_rows.create(backend, tuple(_kernel_weights(w) for w in self.qk), shape, device)

    def project(self, hidden: torch.Tensor, which: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-RoPE q [..., H, D] and k [..., KV, D] of states [..., d] under model `which` (0 base, 1 dormant)."""
        w = self.qk[which]
        x = hidden.float()
        n = w.norm * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + w.eps))
        q = torch.nn.functional.linear(n, w.wq, w.bq)
        k = torch.nn.functional.linear(n, w.wk, w.bk)
        return q.unflatten(-1, (self.n_heads, self.head_dim)), k.unflatten(-1, (self.n_kv, self.head_dim))

    @torch.no_grad()
    def prefix(self, hidden: torch.Tensor) -> AttentionPrefix:
        p = len(hidden)
        (qb, kb), (qd, kd) = self.project(hidden, 0), self.project(hidden, 1)
        cos, sin = rope_angles(torch.arange(p, device=hidden.device), self.head_dim, self.theta)
        keys = (rotate(kb, cos[:, None], sin[:, None]), rotate(kd, cos[:, None], sin[:, None]))
        stats = None
        if p:
            n = torch.tensor([p], device=hidden.device)
            empty = torch.zeros(0, self.n_kv, self.head_dim, device=hidden.device)
            stats = score_rows(qb[None], kb[None], qd[None], kd[None], (empty, empty), 0, n, n, self.heads,
                               self.group, self.head_dim, self.theta, "all", self.baseline, self.offsets)
        return AttentionPrefix(keys, stats, p, self.kernel.prepare(keys) if self.kernel else None)

    @torch.no_grad()
    def run(self, hidden: torch.Tensor, cand_len: int, prefix: AttentionPrefix) -> RowStats:
        """RowStats of the dependent rows' states [B, n, d] (candidate of cand_len tokens, then the suffix)."""
        if self.kernel is not None:
            return self.kernel.score(hidden, cand_len, prefix.prepared, prefix.length, self.heads, self.region,
                                     self.offsets)
        B, n = hidden.shape[:2]
        (qb, kb), (qd, kd) = self.project(hidden, 0), self.project(hidden, 1)
        c = torch.full((B,), cand_len, device=hidden.device)
        d = torch.full((B,), n, device=hidden.device)
        return score_rows(qb, kb, qd, kd, prefix.keys, prefix.length, c, d, self.heads, self.group, self.head_dim,
                          self.theta, self.region, self.baseline, self.offsets)


def _layer_qk(model, layer: int) -> _LayerQK:
    block = model.model.layers[layer]
    attn, ln = block.self_attn, block.input_layernorm
    f = lambda t: t.detach().float()
    bias = lambda lin: f(lin.bias) if lin.bias is not None else torch.zeros(lin.out_features, device=lin.weight.device)
    return _LayerQK(f(ln.weight), float(ln.variance_epsilon), f(attn.q_proj.weight), bias(attn.q_proj),
                    f(attn.k_proj.weight), bias(attn.k_proj))


def _kernel_weights(w: _LayerQK) -> layer_rows.LayerWeights:
    return layer_rows.LayerWeights(w.norm, w.eps, torch.cat((w.wq, w.wk)), torch.cat((w.bq, w.bk)))


def _rope_theta(cfg) -> float:
    """rope_theta at the top level (older configs) or in rope_parameters (transformers 5)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else cfg.rope_theta)
