"""Drop tokens from a found sequence while its score holds.

At Layer 0 a trigger's signal is carried by (key token, query token, offset) cells, and low RoPE
frequencies make neighbouring offsets look alike, so a sequence that repeats part of a trigger can
score like the trigger itself. Minimising shows which tokens carry the score.
"""
from __future__ import annotations

import torch

from .objective import Objective


def minimize(scorer, token_ids: list[int], objective: Objective | str, keep: float = 0.95) -> dict:
    """Greedily remove the token whose removal costs least while the score stays >= keep x original.
    Every removal candidate of a round is scored in one batch."""
    objective = objective if isinstance(objective, Objective) else Objective.parse(objective, scorer.metrics)
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    seq = list(token_ids)
    original = float(objective(scorer.score_batch([seq]))[0])
    current = original
    while len(seq) > 1:
        shorter = [seq[:i] + seq[i + 1 :] for i in range(len(seq))]
        values = objective(scorer.score_batch(shorter))
        b = int(torch.argmax(values))
        if float(values[b]) < keep * original:
            break
        seq, current = shorter[b], float(values[b])
    return {"token_ids": seq, "score": current, "original_score": original, "removed": len(token_ids) - len(seq)}
