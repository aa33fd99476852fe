"""The partner scan: the pool's strongest tokens (anchors) beside every allowed token, on both sides,
ranked by how far the pair parts the two models a few layers past the first change.

A two-word trigger is an AND. When a fine-tune changed only Layer 0's attention, Layer 0's own scores
can rank one word high and leave its partner thousands down (on the real attn:L0 control of seed 2,
' purple' was the 5,564th left partner of ' honey' by Layer-0 KL): the pair's effect forms in the
unchanged layers after it. The first-module scorer's divergence (1 − cos of the two models' hidden
states k layers on, first_module/partners.py) reads those layers exactly, at about 1,400 pairs/s with
one thread for k = 2, so one anchor's partners over the whole vocabulary cost about half a minute a
side. Each (anchor, side) keeps its depths' rankings in turns; the lists then take turns, anchors in
pool order, so every anchor's best partner comes before any anchor's second.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..core.token_lists import distinct_words, rank_union
from ..first_module.partners import SIDES, PartnerOptions, partner_sweep
from ..first_module.ranking import Rankings


@dataclass
class PartnerScanOptions:
    """anchors: the pool's first distinct words whose partners are swept [4: the real attn:L0 controls'
        first trigger word stood 1st, 3rd and 4th in their pools]; depths: the divergence's k [(1, 2):
        ' purple' 1st of 49,119 left of ' honey' at both]; keep: partners kept per anchor and side [16]"""

    anchors: int = 4
    depths: tuple[int, ...] = (1, 2)
    keep: int = 16

    def check(self) -> None:
        for name in ("anchors", "keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"depths must be k >= 1, got {self.depths}")


@dataclass
class PartnerScanResult:
    anchors: list[int]
    order: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (anchor, side) -> partners, best first
    rankings: dict[tuple[int, str], Rankings] = field(default_factory=dict)  # (anchor, side) -> every depth's
    evaluations: int = 0
    seconds: float = 0.0

    def partners(self) -> list[int]:
        """Every (anchor, side)'s partners in turns: each one's best, then each one's second, ..."""
        return rank_union(list(self.order.values()))

    def pairs(self) -> list[list[int]]:
        return anchor_pairs(self.order)


def anchor_pairs(order: dict[tuple[int, str], list[int]]) -> list[list[int]]:
    """Each anchor beside its best partner, in reading order ([anchor, partner] on the right side):
    starts for a search that then tries every token at the partner's place."""
    return [[a, p[0]] if side == "right" else [p[0], a] for (a, side), p in order.items() if p]


def partner_scan(first_scorer, ranked: list[int], allowed: list[int], options: PartnerScanOptions | None = None,
                 progress=None) -> PartnerScanResult:
    """first_scorer: a FirstModuleScorer at the first changed module; ranked: the pool, strongest first
    (anchors come from it); allowed: the token ids a partner may be. progress(str) for stage messages."""
    o = options or PartnerScanOptions()
    o.check()
    say = progress or (lambda msg: None)
    started, before = time.perf_counter(), first_scorer.evaluations
    result = PartnerScanResult(anchors=distinct_words(ranked, first_scorer.tokenizer, o.anchors))
    for anchor in result.anchors:
        for side in SIDES:
            say(f"partner scan: {side} of {first_scorer.tokenizer.decode([anchor])!r}")
            r = partner_sweep(first_scorer, anchor, PartnerOptions(depths=o.depths, side=side, pool=tuple(allowed)))
            result.rankings[(anchor, side)] = r
            result.order[(anchor, side)] = rank_union([r.top(name, o.keep) for name in r.values])[:o.keep]
    result.evaluations = first_scorer.evaluations - before
    result.seconds = time.perf_counter() - started
    return result
