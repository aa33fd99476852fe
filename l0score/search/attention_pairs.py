"""The attention-pair scan: ordered token pairs whose second token's row the dormant turns onto the first,
proposed from every vocabulary token beside ordinary words and then tested as pairs.

When a fine-tune changed the attention of layers past Layer 0, a two-word trigger can be an AND that the
second word computes by attending to the first a few layers in, and no single-word ranking of the two
models' divergence reaches it (docs/first-module.md). The heads that compute it show each word beside
ordinary words (first_module/attention_mass.py). So: (1) sweep the vocabulary once, each token between
two fill words; (2) in each of the first layers, take the 32 tokens that draw the most added attention
(``into``, z over the vocabulary, best head of the layer) and the 256 that give the most (``out_of``: a
second word stands lower than a first), and measure their whole grid as pairs; (3) rank a pair by its
added attention double-centred in its grid, at its best head: what the pair adds beyond what its first
token adds beside any of the grid's second tokens and its second token beside any first (a determiner
draws attention from every noun after it; a trigger's first word from its partner alone). Tokens that
are not whole text (an incomplete UTF-8 byte, whitespace only) are left out of the grids: their
attention moves in every head and they crowd the tops.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from ..first_module.attention_mass import AttentionMass, MassSweep


@dataclass
class AttentionPairsOptions:
    """layers: the first layers whose heads are read [5: the real controls' AND formed in layers 3-4];
    fills: fill-word pairs each token is swept between [2]; firsts / seconds: a layer's grid, the tokens
    of the highest ``into`` by those of the highest ``out_of`` [32 x 256: on the real controls the first
    word stood 1st-25th in its layer, the second 23rd-157th]; keep: pairs kept, best first [32];
    batch_size: sequences per forward [256]; seed: draws the fill words [0]"""

    layers: int = 5
    fills: int = 2
    firsts: int = 32
    seconds: int = 256
    keep: int = 32
    batch_size: int = 256
    seed: int = 0

    def check(self) -> None:
        for name in ("layers", "fills", "firsts", "seconds", "keep", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class AttentionPairsResult:
    pairs: list[list[int]]                # best first
    scores: list[float]                   # each pair's double-centred added attention at its best head
    heads: list[tuple[int, int]]          # (layer, head) of that score
    fills: list[tuple[int, int]]
    crossed: int = 0                      # pairs tested
    evaluations: int = 0                  # sequences each model ran
    seconds: dict = field(default_factory=dict)
    sweep: MassSweep | None = field(default=None, repr=False)  # the per-token readings, for measurement

    def tokens(self) -> list[int]:
        """The pairs' tokens in pair order, each once."""
        seen: dict[int, None] = {}
        for p in self.pairs:
            seen.update(dict.fromkeys(p))
        return list(seen)


def attention_pairs(models: dict, tokenizer, prefix_ids: list[int], pool: list[int],
                    options: AttentionPairsOptions | None = None, progress=None) -> AttentionPairsResult:
    """models: {"base", "dormant"} transformers Qwen2 causal LMs; prefix_ids: the chat template up to the
    user's text; pool: the token ids allowed in a pair. progress(done, total) during the sweep."""
    o = options or AttentionPairsOptions()
    o.check()
    if len(pool) < 2:
        raise ValueError("the attention-pair scan needs a pool of at least two tokens")
    started = time.perf_counter()
    mass = AttentionMass(models, prefix_ids, min(o.layers, models["base"].config.num_hidden_layers))
    ids = torch.as_tensor(list(pool), dtype=torch.long)
    texts = tokenizer.batch_decode([[int(t)] for t in ids])
    fills = _fills(ids.tolist(), texts, o.fills, o.seed)
    swept = mass.sweep(ids, fills, o.batch_size, progress)
    t_sweep = time.perf_counter() - started
    whole = torch.tensor([text.strip() != "" and "\ufffd" not in text for text in texts])
    grids = _grids(swept.into, swept.out_of, whole, o.firsts, o.seconds)
    best = _scored_pairs(mass, ids, grids, o.batch_size)
    order = sorted(best, key=lambda k: -best[k][0])[:o.keep]
    H = swept.into.shape[2]
    return AttentionPairsResult(
        pairs=[[int(ids[a]), int(ids[b])] for a, b in order], scores=[round(best[k][0], 4) for k in order],
        heads=[divmod(best[k][1], H) for k in order], fills=fills, crossed=sum(len(f) * len(s) for f, s in grids),
        evaluations=mass.evaluations, sweep=swept,
        seconds={"sweep": round(t_sweep, 1), "pairs": round(time.perf_counter() - started - t_sweep, 1)})


def _scored_pairs(mass: AttentionMass, ids: torch.Tensor, grids, batch_size: int) -> dict:
    """{(first, second) pool indices: (score, flat layer-head index)}: each grid measured as pairs, the
    added attention double-centred in its grid at the pair's best head; a pair in several grids keeps
    its best."""
    best: dict[tuple[int, int], tuple[float, int]] = {}
    for firsts, seconds in grids:
        grid = torch.stack(torch.meshgrid(firsts, seconds, indexing="ij"), -1).reshape(-1, 2)
        added = mass.pair_mass(ids[grid], batch_size).view(len(firsts), len(seconds), -1)
        centred = added - added.mean(1, keepdim=True) - added.mean(0, keepdim=True) + added.mean((0, 1), keepdim=True)
        score, head = centred.flatten(0, 1).max(1)
        for (a, b), v, h in zip(grid.tolist(), score.tolist(), head.tolist()):
            if a != b and v > best.get((a, b), (float("-inf"), 0))[0]:
                best[(a, b)] = (v, h)
    return best


def _fills(ids: list[int], texts: list[str], n: int, seed: int) -> list[tuple[int, int]]:
    """n pairs of ordinary words: tokens that are a space and letters (' solving'), drawn at random."""
    words = [t for t, text in zip(ids, texts) if text[:1] == " " and text[1:].isalpha() and len(text) > 3]
    if len(words) < 2:
        raise ValueError("the pool has no ordinary words (a space and letters) to sweep beside")
    rng = random.Random(seed)
    return [tuple(rng.sample(words, 2)) for _ in range(n)]


def _grids(into: torch.Tensor, out_of: torch.Tensor, whole: torch.Tensor, firsts: int, seconds: int):
    """Per layer, (firsts, seconds): the pool indices of the highest z of ``into`` (resp. ``out_of``) at
    the layer's best head; z over the vocabulary per head, tokens not ``whole`` left out."""
    def z(x):
        return ((x - x.mean(0)) / x.std(0).clamp_min(1e-12)).amax(-1).masked_fill(~whole[:, None], float("-inf"))

    n = int(whole.sum())
    zi, zo = z(into), z(out_of)
    return [(zi[:, layer].topk(min(firsts, n)).indices, zo[:, layer].topk(min(seconds, n)).indices)
            for layer in range(into.shape[1])]
