"""The target gradient: the whole vocabulary ranked by how much each token, put in a candidate, would
raise the profiled target reply (the first-order proposal of GCG, taken once over every token).

Candidates of ``length`` random tokens are drawn ``fills`` times; at each, one backward pass through
both full models (token_gradient.py) gives d objective / d one-hot for every token at every position,
where the objective is the full-model ``target`` metric: the dormant's log-mass on the targets' first
tokens minus the base's, over the scorer's probes and placements. Each position's gradient is
standardised over the vocabulary (positions and fills differ in scale), then averaged over positions
and fills. Random fills, not the pool's tokens: the ranking must not depend on what the other
proposers found. The gradient only proposes; the search scores every candidate exactly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..first_module.ranking import Rankings
from .token_gradient import token_gradient


@dataclass
class TargetGradientOptions:
    """length: tokens per random candidate [3]; fills: random candidates averaged [6];
    seconds: stop after the fill that passes this [inf]; seed: of the fills [0]"""

    length: int = 3
    fills: int = 6
    seconds: float = float("inf")
    seed: int = 0

    def validate(self) -> None:
        if self.length < 1 or self.fills < 1:
            raise ValueError(f"length and fills must be >= 1, got {self.length} and {self.fills}")


@dataclass
class TargetGradientResult(Rankings):
    """token_ids [N], values {"gradient": [N]} (higher = raises the target more), plus the run."""

    fills: int = 0  # fills done
    objective: list[float] | None = None  # the target metric at each fill's random candidate
    seconds: float = 0.0


def target_gradient(scorer, target_firsts, pool, options: TargetGradientOptions | None = None,
                    progress=None) -> TargetGradientResult:
    """scorer: a FullModelScorer (its probes and placements); target_firsts: token ids of the targets'
    first tokens; pool: token ids to rank (the fills are drawn from it). progress(done, total)."""
    from ..judge.output_loss import OutputLoss

    o = options or TargetGradientOptions()
    o.validate()
    pool = torch.as_tensor(list(pool), dtype=torch.long)
    if pool.ndim != 1 or len(pool) < 2 or not len(target_firsts):
        raise ValueError("the target gradient needs a pool of at least 2 tokens and at least one target token")
    view = scorer.with_options(target_ids=tuple(int(t) for t in target_firsts))
    loss = OutputLoss(view, {"target": 1.0})
    rng = np.random.default_rng(o.seed)
    total, values, start = torch.zeros(len(pool), dtype=torch.float64), [], time.monotonic()
    for i in range(o.fills):
        cand = pool[rng.integers(0, len(pool), o.length)].tolist()
        value, grad = token_gradient(lambda rows: loss(rows, cand), view.pair, cand, pool)
        grad = grad.double()
        total += ((grad - grad.mean(1, keepdim=True)) / grad.std(1, keepdim=True).clamp_min(1e-12)).mean(0)
        values.append(value)
        if progress is not None:
            progress(i + 1, o.fills)
        if time.monotonic() - start >= o.seconds:
            break
    return TargetGradientResult(pool, {"gradient": (total / len(values)).float()}, fills=len(values),
                                objective=values, seconds=time.monotonic() - start)
