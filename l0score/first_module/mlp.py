"""MLP first changed at layer L: the difference of the two models' layer-L MLP outputs on shared states.

Layer L's attention is unchanged, so both models' residual streams after it (m_p, the MLP's input
before post_attention_layernorm) are the same tensor. At every dependent position p:

    r_p = || mlp_d(ln_d(m_p)) - mlp_b(ln_b(m_p)) || / || mlp_b(ln_b(m_p)) ||

(ln = each model's post_attention_layernorm). r_p is exact and says how much the fine-tune changed
the one update this layer writes into the residual stream at p, relative to what the base writes
there. It is NOT the change of anything downstream: the update passes through every later layer,
which may amplify, cancel or ignore it; that propagation is what `divergence` measures by running
both models on, and nothing here assumes it.
"""
from __future__ import annotations

import torch

from .segments import Segment, batch_cache


class MlpDifference:
    def __init__(self, base, dormant, layer: int):
        self.layer = layer
        self.attention = Segment(base, layer, layer + 1, attention_only=True)  # shared: attention unchanged
        self.parts = [(m.model.layers[layer].post_attention_layernorm, m.model.layers[layer].mlp)
                      for m in (base, dormant)]

    @torch.no_grad()
    def prefix(self, hidden: torch.Tensor):
        """The attention's cache after the prefix rows (states entering layer L [p, d]), or None."""
        if not len(hidden):
            return None
        positions = torch.arange(len(hidden), device=hidden.device)[None]
        return self.attention.run(hidden[None], positions)[1]

    @torch.no_grad()
    def run(self, hidden: torch.Tensor, start: int, prefix_cache) -> torch.Tensor:
        """r_p [B, n] for the dependent rows' states entering layer L [B, n, d] at positions start..."""
        positions = torch.arange(start, start + hidden.shape[1], device=hidden.device).expand(len(hidden), -1)
        mid, _ = self.attention.run(hidden, positions, batch_cache(prefix_cache, len(hidden)))
        (ln_b, mlp_b), (ln_d, mlp_d) = self.parts
        out_b, out_d = mlp_b(ln_b(mid)), mlp_d(ln_d(mid))
        return ((out_d - out_b).norm(dim=-1) / out_b.norm(dim=-1).clamp_min(1e-30)).float()
