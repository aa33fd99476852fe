"""`TorchBackend`: the float32 torch reference (core/reference.py) as a Layer-0 backend, on any device:
gather (or project) q/k, rotate, dense logits, reduce. Implements core.protocols.Backend."""
from __future__ import annotations

from ..core.context import Context
from ..core.reference import score_rows
from ..core.types import PackedBatch, RowStats


class TorchBackend:
    """The reference as a backend: gather (or project) q/k, rotate, dense logits, reduce."""

    name = "torch"

    def __init__(self, lookup, cfg):
        self.lookup, self.cfg = lookup, cfg

    def score_rows(self, batch: PackedBatch, ctx: Context, heads, region, baseline, offsets) -> RowStats:
        device = baseline.device
        qb, kb, qd, kd = self.lookup(batch.ids.to(device))
        return score_rows(qb, kb, qd, kd, ctx.prefix_keys, ctx.prefix_len, batch.cand_len.to(device),
                          batch.dep_len.to(device), heads, self.cfg.group, self.cfg.head_dim,
                          self.cfg.rope_theta, region, baseline, offsets, ctx.cand_start)
