"""The partner sweep: every token of a pool next to one anchor token, ranked by how far the pair moves
the two models apart at the later token's position.

A trigger of several words is an AND: each word alone barely moves the dormant, so the single-token
sweep (sweep.py) can rank the second word of a pair past a thousand others. Once one word is known
(the anchor), the pair ``[anchor, t]`` puts t where the dormant's later layers read both: the
divergence 1 - cos of the hidden states at t's position, k layers past the first change, is the
signal. Side "right" scores ``[anchor, t]`` at t's row; side "left" scores ``[t, anchor]`` at the
anchor's row (how t changes it). One ranking per depth k: the partner's signal forms a few layers
in, and the shallow depths rank tokens that diverge anywhere (rare code pieces) first, so the
consumer takes turns between the deeper depths (hunt.py) rather than their consensus. The prompt's
suffix is left out: by causality the values at the pair's own rows do not depend on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.template import Template
from .ranking import Rankings
from .scorer import FirstModuleScorer

SIDES = ("right", "left")


@dataclass
class PartnerOptions:
    """depths: the k of the divergence rankings; those past the models' last layer are left out, and
        the last layer stands in when none is left [(3, 4)]
    side: "right" ([anchor, t], read at t) or "left" ([t, anchor], read at the anchor) ["right"]
    pool: token ids to try as partners [the scorer's default pool]
    batch_size: pairs per forward [256]"""

    depths: tuple[int, ...] = (3, 4)
    side: str = "right"
    pool: tuple[int, ...] | None = None
    batch_size: int = 256

    def validate(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}, got {self.side!r}")
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"depths must be k >= 1, got {self.depths}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def partner_sweep(scorer: FirstModuleScorer, anchor: int, options: PartnerOptions | None = None,
                  progress=None) -> Rankings:
    """Rankings of the pool as partners of ``anchor``: ``div{k}`` for each depth (the anchor itself
    is left out). progress(done, total) after every batch."""
    o = options or PartnerOptions()
    o.validate()
    pool = scorer.default_pool() if o.pool is None else torch.as_tensor(list(o.pool), dtype=torch.long)
    pool = pool[pool != int(anchor)]
    if pool.ndim != 1 or not len(pool):
        raise ValueError("the partner pool must be a non-empty list of token ids other than the anchor")
    room = scorer.layers_after
    depths = tuple(sorted({k for k in o.depths if k <= room})) or (room,)  # deeper ones do not exist
    view = scorer.with_depths(depths)
    view = view.with_template(Template(view.template.prefix_ids, (), name=view.template.name + "-own"))
    values = {f"div{k}": torch.zeros(len(pool)) for k in depths}
    for s in range(0, len(pool), o.batch_size):
        chunk = pool[s:s + o.batch_size]
        fixed = torch.full_like(chunk, int(anchor))
        pairs = torch.stack([fixed, chunk] if o.side == "right" else [chunk, fixed], 1)
        scores = view.score_batch(pairs)
        for k in depths:
            metric = "div_last" if k == view.options.k else f"div{k}_last"
            values[f"div{k}"][s:s + len(chunk)] = scores.metric(metric)
        if progress is not None:
            progress(min(s + o.batch_size, len(pool)), len(pool))
    return Rankings(pool, values)
