"""The hunt's Layer-0 stage: from a weight-diff analysis to ranked trigger candidates and a token pool.

One documented recipe (docs/search.md, "The Layer-0 stage"):

1. score only the analysis' focus heads (`Scorer.with_heads`: same tables, no reload);
2. token evidence: the exact cells (search/cells.py) of the seed tokens as queries against every
   key of the pool at the offsets that matter: a key-only trigger token shows up as a partner;
3. beam search from the seed tokens, growing on both sides one length at a time on the objective
   HUNT_LAYER0_METRIC (sum over the focus heads of each head's largest |dS|), until a longer
   best adds less than `min_gain` (the trigger is complete) or `max_length` is reached;
4. minimise the best beam results (drop tokens while the score keeps `keep` of itself): a trigger
   shorter than max_length comes out as itself;
5. coordinate ascent over the evidence pool at each minimised length, started from the minimised
   results, to polish them;
6. rank the minimised and polished sequences (score, then shorter first), one per cluster (run.py).

The trigger length is not needed: the stage tries up to max_length tokens.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from .beam import beam
from .cells import KeyCells
from .coord import coord
from .minimize import minimize
from .objective import HUNT_LAYER0_METRIC, Objective
from .clusters import cluster_ids


@dataclass(frozen=True)
class Layer0Options:
    """Options of `layer0_stage` (defaults: the measured recipe of docs/search.md)."""

    metric: str = HUNT_LAYER0_METRIC  # what the stage maximises (an Objective spec)
    max_length: int = 5  # longest candidate grown
    n_seeds: int = 16  # analysis seed tokens (ranked, both roles) that start beam fragments
    width: int = 8  # beam width (the first step grows every seed)
    min_gain: float = 0.1  # stop growing when a longer best scores less than this fraction higher
    left_screen: int | None = 64  # left tokens tried per head and fragment (None: the whole pool)
    offsets: tuple[int, ...] = (1, 2, 3)  # offsets of the evidence cells
    partners: int = 64  # strongest evidence cells whose key tokens join the pool
    keep: float = 0.9  # minimise: drop a token while the score keeps this fraction
    minimize_top: int = 8  # beam results minimised
    coord_restarts: int = 2  # coordinate-ascent starts per minimised length (0: no polishing)
    max_repeat: int | None = 1  # occurrences of one token in a candidate
    pool_size: int = 256  # tokens in the returned pool
    top: int = 20  # ranked candidates returned
    focus_only: bool = True  # score only the analysis' focus heads


@dataclass
class Layer0Result:
    candidates: list[dict]  # best first: token_ids, text, score, length, source, cluster
    pool: list[int]  # token ids, strongest evidence first: candidates' tokens, seeds, partners
    focus_heads: list[int]
    seconds: dict[str, float]  # per step
    options: dict = field(default_factory=dict)


def layer0_stage(scorer, analysis, options: Layer0Options = Layer0Options(), progress: bool = False) -> Layer0Result:
    """Ranked trigger candidates and a token pool from a Scorer and an analysis (analysis.json
    content, its path, or the directory holding it)."""
    from ..analysis.weight_diff import read_analysis

    _check(options)
    info = read_analysis(analysis)
    objective = Objective.parse(options.metric, scorer.metrics)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    focus = scorer.with_heads(info["focus_heads"]) if options.focus_only and info["focus_heads"] else scorer
    pool = focus.default_pool()
    seeds = [t for t in info["seed_tokens"] if t in set(pool.tolist())][: options.n_seeds]
    if not seeds:
        raise ValueError("the analysis has no seed token in the scorer's pool")
    cells = KeyCells(focus, pool)
    partner_rows = cells.partners(seeds, options.offsets, options.partners)
    partners = list(dict.fromkeys(key for _, _, key, _, _ in partner_rows))
    seconds["evidence"], clock = time.perf_counter() - clock, time.perf_counter()

    run_kw = dict(objective=objective, progress=progress, max_repeat=options.max_repeat, roundtrip="off")
    grown = _grow(focus, pool, cells, [[t] for t in seeds], options, run_kw)
    seconds["beam"], clock = time.perf_counter() - clock, time.perf_counter()

    found: dict[tuple[int, ...], dict] = {}
    for rec in grown:
        small = minimize(focus, rec["token_ids"], objective, keep=options.keep)
        _add(found, small["token_ids"], small["score"], "beam+minimize")
    seconds["minimize"], clock = time.perf_counter() - clock, time.perf_counter()

    evidence = list(dict.fromkeys([t for ids in found for t in ids] + seeds + partners))
    if options.coord_restarts:
        for length in sorted({len(ids) for ids in found}):
            starts = [list(ids) for ids in found if len(ids) == length][: options.coord_restarts]
            for rec in coord(focus, length=length, restarts=len(starts), seeds=starts, pool=evidence, **run_kw)[:4]:
                _add(found, rec["token_ids"], rec["score"], "coord")
    seconds["coord"] = time.perf_counter() - clock

    ranked = sorted(found.values(), key=lambda r: (-round(r["score"], 6), r["length"], r["token_ids"]))
    for rec, cluster in zip(ranked, cluster_ids([r["token_ids"] for r in ranked], scorer.pair.tokenizer)):
        rec["cluster"] = cluster
        rec["text"] = scorer.pair.tokenizer.decode(rec["token_ids"]) if scorer.pair.tokenizer is not None else None
    token_pool = list(dict.fromkeys([t for r in ranked for t in r["token_ids"]] + evidence))[: options.pool_size]
    return Layer0Result(ranked[: options.top], token_pool, list(focus.heads), seconds, asdict(options))


def _grow(scorer, pool, cells, fragments, options: Layer0Options, run_kw) -> list[dict]:
    """Beam one length at a time (both sides) until a step adds less than `min_gain` of the best
    score or max_length is reached; the best results of every length, best first."""
    out, best_before = [], None
    for length in range(2, options.max_length + 1):
        res = beam(scorer, length=length, width=options.width, seeds=fragments, left_screen=options.left_screen,
                   cells=cells, pool=pool, keep=max(options.width, options.minimize_top), **run_kw)
        res = sorted(res, key=lambda r: -r["score"])
        if not res:
            break
        out += res[: options.minimize_top]
        best = res[0]["score"]
        if best_before is not None and best - best_before < options.min_gain * abs(best_before):
            break  # nothing more to add: the last token only carried noise
        best_before, fragments = best, [r["token_ids"] for r in res[: options.width]]
    return sorted(out, key=lambda r: -r["score"])[: options.minimize_top]


def _add(found: dict, ids, score: float, source: str) -> None:
    ids = tuple(int(t) for t in ids)
    if ids not in found or found[ids]["score"] < score:
        found[ids] = {"token_ids": list(ids), "score": float(score), "length": len(ids), "source": source}


def _check(options: Layer0Options) -> None:
    if not isinstance(options, Layer0Options):
        raise TypeError(f"options must be a Layer0Options, got {type(options).__name__}")
    for name in ("max_length", "n_seeds", "width", "partners", "minimize_top", "pool_size", "top"):
        if getattr(options, name) <= 0:
            raise ValueError(f"Layer0Options.{name} must be positive, got {getattr(options, name)}")
    if not 0 < options.keep <= 1:
        raise ValueError(f"Layer0Options.keep must be in (0, 1], got {options.keep}")
    if options.coord_restarts < 0:
        raise ValueError(f"Layer0Options.coord_restarts must be >= 0, got {options.coord_restarts}")
    if not options.offsets or min(options.offsets) < 1:
        raise ValueError(f"Layer0Options.offsets must be positive offsets, got {options.offsets}")
