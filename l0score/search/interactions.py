"""Interaction scan: which vocabulary token completes which pool token, beyond what either does alone.

A trigger of two words often shows neither word strongly on its own: the fine-tune reacts to the
pair. For each anchor token a (the pool's strongest) and every vocabulary token p, the scorer scores
the pair p·a (p on the left) and a·p (on the right) exactly, with `score_extensions`. The raw values
are dominated by tokens that raise the metric next to anything (generic suffixes like 'ing'), so the
matrix S[a, p] of one side is double-centred,

    R[a, p] = S[a, p] - mean_a' S[a', p] - (mean_p' S[a, p'] - mean S),

which removes each partner's effect alone and each anchor's, and each anchor's row is scaled to unit
spread: z[a, p] = R[a, p] / std_p R[a, p]. What is left is the interaction. On the real Layer-0
control (docs/search.md, "Interaction scan") the attention-distribution metric `kl` put the
trigger's pair first of 32 anchors x 49,120 partners x 2 sides, where the stage's own metric and the
raw values did not.

It runs on any scorer with `score_extensions(prefixes, pool, side=...)` returning per-metric values
(the Layer-0 Scorer, where a whole-vocabulary side costs a fraction of a second; the first-module
scorer, where it costs minutes, so give it a smaller `partners` pool).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

SIDES = ("left", "right")


@dataclass(frozen=True)
class InteractionOptions:
    metric: str = "kl"  # the scorer's metric whose interactions are ranked
    anchors: int = 32  # the pool's strongest tokens scanned (the centring needs several)
    sides: tuple[str, ...] = SIDES
    top: int = 16  # rows returned, strongest first
    per_anchor: int = 1  # best partners kept per anchor and side before ranking


@dataclass
class InteractionResult:
    rows: list[dict]  # strongest first: anchor, partner, side, z, score, token_ids (the pair in order)
    anchors: list[int]
    evaluations: int
    options: dict = field(default_factory=dict)

    def partners(self) -> list[int]:
        """The partner tokens, strongest interaction first, each once (anchors already in the pool)."""
        return list(dict.fromkeys(r["partner"] for r in self.rows))

    def pairs(self) -> list[list[int]]:
        return [r["token_ids"] for r in self.rows]


def interaction_scan(scorer, anchors, partners=None, options: InteractionOptions | None = None,
                     progress=None) -> InteractionResult:
    """anchors: token ids (best first; the first options.anchors are scanned); partners: token ids
    every anchor is paired with (default: the scorer's whole pool); progress(done, total)."""
    o = options or InteractionOptions()
    _check(scorer, o)
    anchors = list(dict.fromkeys(int(a) for a in anchors))[: o.anchors]
    if len(anchors) < 3:
        raise ValueError(f"the interaction scan needs at least 3 anchor tokens to centre on, got {len(anchors)}")
    pool = scorer.default_pool() if partners is None else torch.as_tensor(list(partners), dtype=torch.long)
    if pool.ndim != 1 or len(pool) < 3:
        raise ValueError("the interaction scan needs at least 3 partner tokens")
    rows, done, total = [], 0, len(anchors) * len(o.sides)
    for side in o.sides:
        values = []
        for a in anchors:
            values.append(scorer.score_extensions([[a]], pool, side=side).metric(o.metric).double())
            done += 1
            if progress is not None:
                progress(done, total)
        rows += _side_rows(torch.stack(values), anchors, pool, side, o.per_anchor)
    rows.sort(key=lambda r: -r["z"])
    return InteractionResult(rows[: o.top], anchors, total * len(pool),
                             {"metric": o.metric, "anchors": o.anchors, "sides": list(o.sides), "top": o.top,
                              "per_anchor": o.per_anchor, "partners": len(pool)})


def _side_rows(S: torch.Tensor, anchors: list[int], pool: torch.Tensor, side: str, per_anchor: int) -> list[dict]:
    """The double-centred z of one side's [anchors, partners] matrix, best partners per anchor."""
    R = S - S.mean(0, keepdim=True)
    R = R - R.mean(1, keepdim=True)
    z = R / R.std(1, keepdim=True).clamp_min(1e-12)
    same = pool[None, :] == torch.tensor(anchors)[:, None]
    z[same] = float("-inf")  # a token next to itself is no pair
    best = torch.topk(z, min(per_anchor, len(pool)), dim=1)
    out = []
    for i, a in enumerate(anchors):
        for v, j in zip(best.values[i].tolist(), best.indices[i].tolist()):
            p = int(pool[j])
            out.append({"anchor": a, "partner": p, "side": side, "z": round(v, 4), "score": float(S[i, j]),
                        "token_ids": [p, a] if side == "left" else [a, p]})
    return out


def _check(scorer, o: InteractionOptions) -> None:
    if o.metric not in scorer.metrics:
        raise ValueError(f"interaction metric {o.metric!r} is not one of the scorer's: {', '.join(scorer.metrics)}")
    bad = [s for s in o.sides if s not in SIDES]
    if bad or not o.sides:
        raise ValueError(f"interaction sides must be among {SIDES}, got {o.sides}")
    for name in ("anchors", "top", "per_anchor"):
        if getattr(o, name) < 1:
            raise ValueError(f"InteractionOptions.{name} must be positive, got {getattr(o, name)}")
