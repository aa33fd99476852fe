"""What a search maximises: one metric of docs/metrics.md, or a weighted sum, plus random-candidate calibration."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.scores import METRICS


# The Layer-0 objective of the hunt (docs/search.md, "Which metric recovers the trigger"): each
# scored head contributes its largest |dS|, so only a sequence holding every planted (key, query)
# pair scores on every head the trigger moved. kl and max_abs reward near-misses that repeat the
# strongest pair ([q1, X, q2] over [k, q1, q2] under kl at full scale).
HUNT_LAYER0_METRIC = "head_max_sum"


@dataclass(frozen=True)
class Objective:
    """`max_abs`, `kl`, `band`, `head_max_sum`, or a weighted sum written "max_abs=1,kl=0.5"."""

    weights: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, spec: str, metrics: tuple[str, ...] = METRICS) -> "Objective":
        """Names are checked against ``metrics``: the Layer-0 metrics, or a full-model scorer's own."""
        example = f"'{metrics[0]}=1,{metrics[-1]}=0.5'"
        if spec is None or not str(spec).strip():
            raise ValueError(f"metric must be one of {', '.join(metrics)} or a weighted sum like {example}")
        parts = []
        for item in str(spec).split(","):
            name, _, w = item.partition("=")
            name = name.strip()
            if name not in metrics:
                raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(metrics)} or a weighted sum like {example}")
            try:
                parts.append((name, float(w) if w else 1.0))
            except ValueError:
                raise ValueError(f"metric weight {w!r} is not a number") from None
        return cls(tuple(parts))

    @property
    def name(self) -> str:
        if len(self.weights) == 1 and self.weights[0][1] == 1.0:
            return self.weights[0][0]
        return ",".join(f"{n}={w:g}" for n, w in self.weights)

    def value(self, record: dict) -> float:
        """The objective from a result row's metric fields (what a search wrote to its JSONL)."""
        return sum(w * float(record[n]) for n, w in self.weights)

    def __call__(self, scores) -> torch.Tensor:
        """One value per candidate from a Layer-0 `Scores` or a full-model `FullScores`."""
        return sum(w * scores.metric(n) for n, w in self.weights)


@dataclass(frozen=True)
class Calibration:
    """Mean and spread of the objective over random candidates of one length and template."""

    mean: float
    std: float
    n: int

    def z(self, value: float) -> float:
        return (value - self.mean) / self.std

    @classmethod
    def measure(cls, scorer, objective: Objective, length: int, pool: torch.Tensor, n: int = 512, seed: int = 0):
        rng = np.random.default_rng([seed, length, 7919])
        cands = pool.numpy()[rng.integers(0, len(pool), size=(n, length))]
        values = objective(scorer.score_batch(cands)).double().cpu().numpy()
        return cls(float(values.mean()), float(values.std()) or 1e-12, n)
