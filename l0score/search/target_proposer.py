"""The target proposer: once the profile has named the dormant's reply, tokens for the pool from two
rankings of the whole vocabulary.

1. the target gradient (target_gradient.py): which tokens, in a candidate, would raise the reply's
   first token in the dormant over the base. On the real full controls it ranked one trigger word
   first and left the other thousands down: a trigger is an AND, and the gradient at random fills
   sees each word alone;
2. the partner scan (partner_scan.py, on first_module/partners.py) next to the gradient's best ``anchors`` words, on
   both sides, over the ``partner_pool`` best tokens of the first-module sweep: the second word
   shows once the first stands beside it. Its depths take turns.

The picks take turns between the gradient's ranking and the partners'. The hunt interleaves them
into its pool (hunt.py, ``target_share``); every candidate is then scored exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..first_module.ranking import Rankings
from .partner_scan import PartnerScanOptions, anchor_pairs, partner_scan
from .pool import interleave
from .target_gradient import TargetGradientOptions, TargetGradientResult, target_gradient


@dataclass
class TargetProposerOptions:
    """anchors: the gradient's best tokens whose partners are swept [2: the first trigger word ranked
        first on the real full controls of seeds 1-2]; partner_pool: how many of the first-module
        sweep's best tokens are tried as partners [12288: alone, the second words ranked 490th and
        about 1,060th]; picks: tokens returned [64];
    gradient: the target gradient's options; partner_depths: the partner sweep's depths [(3, 4)]"""

    anchors: int = 2
    partner_pool: int = 12288
    picks: int = 64
    gradient: TargetGradientOptions = field(default_factory=TargetGradientOptions)
    partner_depths: tuple[int, ...] = (3, 4)


@dataclass
class TargetProposerResult:
    picks: list[int]  # best first
    gradient: TargetGradientResult
    partners: dict[tuple[int, str], Rankings]  # (anchor, side) -> the partner sweep's rankings
    partner_order: dict[tuple[int, str], list[int]]  # (anchor, side) -> its depths taking turns

    def pairs(self) -> list[list[int]]:
        return anchor_pairs(self.partner_order)


def target_proposer(full_scorer, first_scorer, target_first: int, pool: list[int], sweep_ranking: list[int],
                    options: TargetProposerOptions | None = None, progress=None) -> TargetProposerResult:
    """full_scorer: a FullModelScorer; first_scorer: a FirstModuleScorer at the first changed module;
    target_first: the profiled reply's first token; pool: allowed token ids (the gradient ranks them,
    partners come from them); sweep_ranking: the first-module sweep's tokens, best first.
    progress(str) for stage messages."""
    o = options or TargetProposerOptions()
    say = progress or (lambda msg: None)
    allowed = set(pool)
    say("target gradient over the vocabulary")
    grad = target_gradient(full_scorer, (target_first,), sorted(allowed), o.gradient)
    ranked = grad.ranking("gradient").tolist()
    partner_pool = tuple(t for t in sweep_ranking if t in allowed)[:o.partner_pool]
    # each depth's best `picks` in turns, kept whole (picks per depth)
    scan = partner_scan(first_scorer, ranked, list(partner_pool), PartnerScanOptions(
        anchors=o.anchors, depths=o.partner_depths, keep=o.picks * len(o.partner_depths)), progress=say)
    picks = interleave(ranked, scan.partners(), 0.5, o.picks)
    return TargetProposerResult(picks, grad, scan.rankings, scan.order)
