"""Per-token pre-RoPE q/k for both models: the token table, and the direct projection it replaces.

At Layer 0, q and k of a position depend only on its token id (docs/architecture.md#the-layer-0-score-exactly), so a table of q/k rows
for the vocabulary turns scoring into gather + RoPE + dot products. When a table does not fit, the
direct path projects the gathered embeddings on the fly; both expose the same `lookup`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.model_pair import ModelPair
from ..core.reference import project

TABLE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class TokenTable:
    """q [V, H, D] and k [V, KV, D] for base and dormant, in float32 or bfloat16."""

    q_base: torch.Tensor
    k_base: torch.Tensor
    q_dorm: torch.Tensor
    k_dorm: torch.Tensor

    @classmethod
    def build(cls, pair: ModelPair, dtype: str = "float32", device=None, chunk: int = 4096) -> "TokenTable":
        """Project every embedding row (padding rows too, so any valid id can be looked up)."""
        if dtype not in TABLE_DTYPES:
            raise ValueError(f"table dtype must be one of {sorted(TABLE_DTYPES)}, got {dtype!r}")
        cfg = pair.config
        device = torch.device("cpu") if device is None else torch.device(device)
        out = []
        for w in (pair.base, pair.dormant):
            q = torch.empty(cfg.vocab_rows, cfg.num_heads, cfg.head_dim, dtype=TABLE_DTYPES[dtype], device=device)
            k = torch.empty(cfg.vocab_rows, cfg.num_kv_heads, cfg.head_dim, dtype=TABLE_DTYPES[dtype], device=device)
            for start in range(0, cfg.vocab_rows, chunk):
                ids = torch.arange(start, min(start + chunk, cfg.vocab_rows), device=device)
                q[start : start + len(ids)], k[start : start + len(ids)] = project(w, ids)
            out += [q, k]
        return cls(*out)

    def lookup(self, ids: torch.Tensor):
        """(q_base, k_base, q_dorm, k_dorm) rows for ids, as float32."""
        return tuple(t[ids].float() for t in (self.q_base, self.k_base, self.q_dorm, self.k_dorm))


@dataclass
class DirectProjector:
    """The no-table path: embedding gather -> RMSNorm -> Q/K projection per call."""

    pair: ModelPair
    device: torch.device

    def lookup(self, ids: torch.Tensor):
        qb, kb = project(self.pair.base, ids, self.device)
        qd, kd = project(self.pair.dormant, ids, self.device)
        return qb, kb, qd, kd
