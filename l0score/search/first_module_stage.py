"""The hunt's first-module stage, for fine-tunes whose Layer-0 attention is unchanged: from the first
changed module to a token pool and ranked candidates, before the full models (docs/architecture.md#beyond-layer-0).

1. the vocabulary sweep (first_module/sweep.py) ranks every token at the user-message slot by
   ``ranking`` (default: the consensus of the divergences ``div{d}`` at every recorded depth d, the
   geometric mean of their ranks; with one depth that depth's divergence; with none the module's own
   difference);
2. the pool: the sweep's top tokens interleaved with the weight-delta projection's ``in`` ranking
   (analysis/delta_projection.py; passed in, no forward pass), which gets ``projection_share`` of the
   places in every prefix of the pool;
3. beam search on the first-module scorer over that pool at every length up to ``max_length``,
   seeded with the pool's strongest tokens; results ranked by the scorer's objective.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from ..first_module.sweep import SweepOptions, sweep
from .beam import beam
from .pool import interleave


@dataclass(frozen=True)
class FirstModuleStageOptions:
    # divergence depth of the beam's objective (0: the module's difference); 1 ranked the trigger's
    # tokens highest on the trained controls and the first real MLP-only control (docs/first-module.md)
    k: int = 1
    # sweep depths recorded (k is always among them); the pool ranks by their consensus: on the real
    # controls the best single depth differed from pair to pair (1 on one, 3 on another), the consensus
    # of 1-4 stayed within the 40 best on each (docs/first-module.md "Which depth")
    depths: tuple[int, ...] = (1, 2, 3, 4)
    ranking: str | None = None  # sweep ranking of the pool ["consensus" of the depths, see above]
    pool_size: int = 128
    projection_share: float = 0.25
    max_length: int = 3
    width: int = 8
    seeds: int = 8  # strongest pool tokens that start beam fragments
    top: int = 20
    batch_size: int = 256


@dataclass
class FirstModuleStageResult:
    candidates: list[dict]  # best first: token_ids, text, score, length, objective
    pool: list[int]
    sweep_top: dict[str, list[int]]  # ranking -> its 50 best tokens
    seconds: dict[str, float]
    options: dict = field(default_factory=dict)
    sweep_ranking: list[int] = field(default_factory=list)  # every swept token, by the pool's ranking


def first_module_stage(scorer, options: FirstModuleStageOptions | None = None, projection=None,
                       progress=None) -> FirstModuleStageResult:
    """scorer: a FirstModuleScorer (its k is replaced by options.k); projection: a delta_projection
    result or None; progress(str) for stage messages."""
    o = options or FirstModuleStageOptions()
    say = progress or (lambda msg: None)
    if not 0 <= o.projection_share <= 1:
        raise ValueError(f"projection_share must be in [0, 1], got {o.projection_share}")
    room = scorer.layers_after
    if o.k > room:
        raise ValueError(f"k = {o.k} layers after {scorer.kind} is beyond the models' last layer (k <= {room})")
    depths = tuple(sorted({k for k in o.depths if k <= room} | ({o.k} if o.k else set())))  # deeper ones do not exist
    t0 = time.perf_counter()
    say(f"sweep of the vocabulary at {scorer.kind}")
    swept = sweep(scorer, SweepOptions(depths=depths, batch_size=o.batch_size))
    divs = [f"div{d}" for d in depths]
    if len(divs) > 1:
        swept.add_consensus(divs)
    ranking = o.ranking or ("consensus" if len(divs) > 1 else divs[0] if divs else _module_ranking(scorer))
    t1 = time.perf_counter()
    pool = _pool(swept, ranking, projection, o)
    view = scorer.with_depths((o.k,)) if o.k else scorer
    metric = "div_cand" if o.k else _module_ranking(scorer)
    seeds = [[t] for t in pool[:o.seeds]]
    results = []
    for length in range(2, o.max_length + 1):
        say(f"beam at length {length} on {metric}")
        results += beam(view, objective=metric, length=length, width=o.width, seeds=seeds, grow="right",
                        pool=torch.tensor(pool), progress=False, calibrate=0, keep=o.top)
    singles = view.score_batch([[t] for t in pool[:o.top]]).metric(metric)
    tok = scorer.pair.tokenizer
    results += [{"token_ids": [t], "score": float(v), "objective": view.kind} for t, v in zip(pool[:o.top], singles)]
    ranked = sorted(results, key=lambda r: (-r["score"], len(r["token_ids"])))[:o.top]
    cands = [{"token_ids": r["token_ids"], "text": tok.decode(r["token_ids"]), "score": r["score"],
              "length": len(r["token_ids"]), "objective": r.get("objective", view.kind), "metric": metric} for r in ranked]
    return FirstModuleStageResult(cands, pool, {name: swept.top(name, 50) for name in swept.values},
                                  {"sweep": t1 - t0, "search": time.perf_counter() - t1}, asdict(o),
                                  swept.ranking(ranking).tolist())


def _module_ranking(scorer) -> str:
    return {"mlp": "mlp_cand", "attn": "head_max_sum"}.get(scorer.location.module, "div1")


def _pool(swept, ranking: str, projection, o: FirstModuleStageOptions) -> list[int]:
    """The sweep's best tokens interleaved with the projection's, so that every prefix of the pool
    (a consumer may cut it shorter) holds about ``projection_share`` of projection picks."""
    theirs = projection.ranking("in").tolist() if projection is not None and "in" in projection.values else []
    share = o.projection_share if projection is not None else 0.0
    return interleave(swept.ranking(ranking).tolist(), theirs, share, o.pool_size)
