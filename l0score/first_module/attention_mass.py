"""Attention mass: how much more the dormant than the base attends from one token to another, head by
head in the first layers, read from eager attention's probabilities with the chat prefix cached.

A fine-tune of every layer's attention can keep a two-word trigger as an AND that forms a few layers
in: the second word's row attends to the first (docs/first-module.md). Alone, each word moves the two
models' hidden states no more than thousands of other tokens, but the heads that compute the AND were
trained to look from the second word to the first, and that shows beside ordinary words: in
``[f, t, g]`` the dormant's row of g gives t more of its attention than the base's does when t is the
first word (``into``: g's row onto t), and t's row gives more to f when t is the second word
(``out_of``: t's row onto f). Into is read as the log-ratio of the two models' probabilities (a key
drawing attention shows whatever the base gave it; measured the steadier across fills), out of as
their difference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .segments import Segment, batch_cache


@dataclass
class MassSweep:
    """Per pool token, mean over fills: ``into`` [V, L, H] and ``out_of`` [V, L, H]."""

    pool: torch.Tensor
    into: torch.Tensor
    out_of: torch.Tensor
    evaluations: int


class AttentionMass:
    """Both models' first ``layers`` layers with eager attention, the ``prefix_ids`` (the chat
    template's start of the user turn) run once; sequences are read right after it."""

    def __init__(self, models: dict, prefix_ids: list[int], layers: int):
        n = models["base"].config.num_hidden_layers
        if not 1 <= layers <= n:
            raise ValueError(f"layers must be in [1, {n}] (the models' depth), got {layers}")
        self.layers, self.prefix = layers, list(prefix_ids)
        self.heads = models["base"].config.num_attention_heads
        self.segments, self.caches = {}, {}
        for name in ("base", "dormant"):
            seg = Segment(models[name], 0, layers, eager=True)
            _, cache = seg.run(None, torch.arange(len(self.prefix))[None], None,
                               input_ids=torch.tensor([self.prefix]))
            self.segments[name], self.caches[name] = seg, cache
        self.evaluations = 0

    @torch.no_grad()
    def probabilities(self, name: str, seqs: torch.Tensor) -> torch.Tensor:
        """[N, L, H, n, n]: each layer's attention among the sequences' own n tokens (prefix columns
        dropped) in model ``name``."""
        seg, P = self.segments[name], len(self.prefix)
        grabbed: list[torch.Tensor] = []
        hooks = [layer.self_attn.register_forward_hook(lambda m, i, o: grabbed.append(o[1][:, :, :, P:]))
                 for layer in seg.view.layers]
        try:
            positions = torch.arange(P, P + seqs.shape[1]).expand(len(seqs), -1)
            seg.run(None, positions, batch_cache(self.caches[name], len(seqs)), input_ids=seqs)
        finally:
            for h in hooks:
                h.remove()
        self.evaluations += len(seqs)
        return torch.stack(grabbed, 1)

    def pair_mass(self, pairs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """[N, L, H]: dormant minus base probability of the second token's row onto the first."""
        out = []
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s:s + batch_size]
            d, b = (self.probabilities(name, chunk)[:, :, :, 1, 0] for name in ("dormant", "base"))
            out.append(d - b)
        return torch.cat(out) if out else torch.zeros(0, self.layers, self.heads)

    def sweep(self, pool: torch.Tensor, fills: list[tuple[int, int]], batch_size: int = 256,
              progress=None) -> MassSweep:
        """Every pool token t as ``[f, t, g]`` for each fill pair (f, g), averaged over the fills.
        progress(done, total) after each batch."""
        if not fills:
            raise ValueError("the sweep needs at least one fill pair")
        V = len(pool)
        into, out_of = torch.zeros(V, self.layers, self.heads), torch.zeros(V, self.layers, self.heads)
        total, done = V * len(fills), 0
        for f, g in fills:
            for s in range(0, V, batch_size):
                t = pool[s:s + batch_size]
                seqs = torch.stack([torch.full_like(t, f), t, torch.full_like(t, g)], 1)
                d, b = self.probabilities("dormant", seqs), self.probabilities("base", seqs)
                into[s:s + len(t)] += (_log(d[..., 2, 1]) - _log(b[..., 2, 1])) / len(fills)
                out_of[s:s + len(t)] += (d[..., 1, 0] - b[..., 1, 0]) / len(fills)
                done += len(t)
                if progress is not None:
                    progress(done, total)
        return MassSweep(pool=pool, into=into, out_of=out_of, evaluations=2 * total)


def _log(p: torch.Tensor) -> torch.Tensor:
    return p.clamp_min(1e-12).log()
