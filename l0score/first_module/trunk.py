"""The shared trunk: layers 0..L-1, bit-identical in both models, run once per batch of candidates.

A batch's sequences are ``prefix + candidate + suffix`` with equal-length candidates. The prefix never
changes, so its pass through the trunk is done once per template: its KV cache and its hidden states
at layer L's input are kept, and each batch runs only the candidate and suffix rows (the dependent
rows) on a copy of that cache, as the full-model objective reuses the prompt prefix's cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .segments import Segment, batch_cache


@dataclass
class PrefixTrunk:
    """The prefix's pass through the trunk: its cache and its states entering layer L [p, d]."""

    cache: object
    hidden: torch.Tensor


class Trunk:
    """Layers [0, layer) of ``model`` (the base; the dormant's are identical)."""

    def __init__(self, model, layer: int):
        self.model, self.layer = model, layer
        self.segment = Segment(model, 0, layer) if layer > 0 else None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(ids)

    @torch.no_grad()
    def prefix(self, prefix_ids: list[int], device) -> PrefixTrunk:
        ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=device)
        if not len(prefix_ids):
            return PrefixTrunk(None, torch.zeros(0, self.model.config.hidden_size, device=device))
        if self.segment is None:
            return PrefixTrunk(None, self.embed(ids)[0])
        positions = torch.arange(ids.shape[1], device=device)[None]
        hidden, cache = self.segment.run(None, positions, None, input_ids=ids)
        return PrefixTrunk(cache, hidden[0])

    @torch.no_grad()
    def run(self, dep_ids: torch.Tensor, start: int, prefix: PrefixTrunk) -> torch.Tensor:
        """States entering layer L [B, n, d] of the dependent rows dep_ids [B, n] at positions start..."""
        if self.segment is None:
            return self.embed(dep_ids)
        positions = torch.arange(start, start + dep_ids.shape[1], device=dep_ids.device).expand(len(dep_ids), -1)
        hidden, _ = self.segment.run(None, positions, batch_cache(prefix.cache, len(dep_ids)), input_ids=dep_ids)
        return hidden
