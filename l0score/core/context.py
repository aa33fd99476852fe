"""What a template contributes once, cached and reused for every candidate (docs/architecture.md#the-layer-0-score-exactly).

The prefix rows never change, so their rotated keys are computed once per model and their own
cells are reduced once (only region="all" reads them). The suffix is fixed text, but its positions
move with the candidate length, so it is scored with the dependent rows.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .reference import rope_angles, rotate, score_rows
from .types import RowStats
from .template import Template


@dataclass
class Context:
    template: Template
    prefix_len: int
    suffix_ids: torch.Tensor  # [s] int64
    prefix_keys: tuple[torch.Tensor, torch.Tensor]  # rotated [p, KV, D], base and dormant
    prefix_stats: RowStats | None  # prefix rows reduced over all their cells ([1, Hs] ...), None if p == 0
    cand_start: int  # absolute position of the candidate's first token (< prefix_len for extensions)

    @classmethod
    def build(cls, template: Template, lookup, cfg, heads, baseline, offsets, device) -> "Context":
        """lookup(ids) -> (q_base, k_base, q_dorm, k_dorm) pre-RoPE (a TokenTable or DirectProjector)."""
        prefix = torch.tensor(template.prefix_ids, dtype=torch.int64, device=device)
        p = len(prefix)
        qb, kb, qd, kd = lookup(prefix)
        cos, sin = rope_angles(torch.arange(p, device=device), cfg.head_dim, cfg.rope_theta)
        keys = (rotate(kb, cos[:, None], sin[:, None]), rotate(kd, cos[:, None], sin[:, None]))
        stats = None
        if p:
            n = torch.tensor([p], device=device)
            empty = torch.zeros(0, cfg.num_kv_heads, cfg.head_dim, device=device)
            stats = score_rows(qb[None], kb[None], qd[None], kd[None], (empty, empty), 0, n, n,
                               heads, cfg.group, cfg.head_dim, cfg.rope_theta, "all", baseline, offsets)
        suffix = torch.tensor(template.suffix_ids, dtype=torch.int64)
        return cls(template, p, suffix, keys, stats, p)

    def extend(self, cand_keys: tuple[torch.Tensor, torch.Tensor]) -> "Context":
        """A context whose cached prefix also holds a candidate's first tokens (rotated keys
        [c, KV, D] per model at positions p..p+c-1): only the next token and the suffix stay dependent."""
        keys = tuple(torch.cat((pk, ck)) for pk, ck in zip(self.prefix_keys, cand_keys))
        return replace(self, prefix_len=self.prefix_len + len(cand_keys[0]), prefix_keys=keys,
                       prefix_stats=None, cand_start=self.cand_start)
