"""What every driver shares: budgets, progress, the best-results set, calibration, checkpoints.

A driver calls `run.score(...)` / `run.score_extensions(...)` for every evaluation, `run.offer(...)`
with what it scored, and `run.checkpoint(state)` at step boundaries with a JSON-able state that is
enough to continue. A killed run resumes from its last checkpoint and, for the same options and
candidate budget, ends with the same results as an uninterrupted run. A token occurs at most
`max_repeat` times in a candidate (default 1: no repeats unless asked; None: no cap).
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .clusters import cluster_ids
from .objective import Calibration, Objective
from .pool import roundtrips

ROUNDTRIP_MODES = ("report", "search", "off")


@dataclass
class RunOptions:
    """How every driver's run is bounded, saved and reported (defaults in brackets). Drivers take these
    as `run=RunOptions(...)` or as the same keywords.

    pool: token ids candidates are made of [the scorer's default_pool()]
    out: results JSONL, best first, with the checkpoint OUT.ckpt.json beside it [None: memory only]
    budget: candidates scored at most [None]; seconds: wall-clock budget [None]
    threshold: stop once the best score reaches it [None]
    checkpoint_every: seconds between checkpoints [30]; resume: continue from OUT.ckpt.json [False]
    progress: a progress bar [True]; keep: results kept and written [100]
    roundtrip: "report" drops results whose text does not re-tokenize to the same ids, "search" also
        prunes such prefixes while searching, "off" keeps everything ["report"]
    calibrate: random candidates whose scores give each result's z (0: no z-scores) [512]
    seed: random seed [0]; max_repeat: occurrences of one token in a candidate (None: no cap) [1]
    """

    pool: torch.Tensor | None = None
    out: str | Path | None = None
    budget: int | None = None
    seconds: float | None = None
    threshold: float | None = None
    checkpoint_every: float = 30.0
    resume: bool = False
    progress: bool = True
    keep: int = 100
    roundtrip: str = "report"
    calibrate: int = 512
    seed: int = 0
    max_repeat: int | None = 1

    def validate(self) -> None:
        if self.roundtrip not in ROUNDTRIP_MODES:
            raise ValueError(f"roundtrip must be one of {', '.join(ROUNDTRIP_MODES)}, got {self.roundtrip!r}")
        if self.max_repeat is not None and self.max_repeat <= 0:
            raise ValueError(f"max_repeat must be positive, got {self.max_repeat}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"keep must be a positive number of results, got {self.keep!r}")
        if self.budget is not None and self.budget <= 0:
            raise ValueError(f"budget must be a positive number of candidates, got {self.budget}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")
        c = self.calibrate
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ValueError(f"calibrate must be a count of random candidates >= 0 (0: no z-scores), got {c!r}")


class SearchRun:
    def __init__(self, scorer, objective: Objective | str, *, driver: str, options: dict, length: int | None = None,
                 run: RunOptions | None = None, executor=None, **settings):
        """settings: RunOptions fields as keywords (or pass `run`, not both); `executor` runs every
        score / score_extensions call (l0score.core.protocols.Executor; None: here)."""
        if run is not None and settings:
            raise TypeError(f"give run=RunOptions(...) or its fields as keywords, not both: {sorted(settings)}")
        run = run if run is not None else RunOptions(**settings)
        run.validate()
        pool, out, budget, seconds, threshold = run.pool, run.out, run.budget, run.seconds, run.threshold
        checkpoint_every, resume, progress, keep, roundtrip = (run.checkpoint_every, run.resume, run.progress,
                                                               run.keep, run.roundtrip)
        calibrate, seed, max_repeat = run.calibrate, run.seed, run.max_repeat
        if executor is not None:  # every score / score_extensions call runs where the executor says
            scorer = executor.scorer(scorer)
        self.scorer = scorer
        self.objective = objective if isinstance(objective, Objective) else Objective.parse(objective, scorer.metrics)
        self.driver, self.length, self.seed, self.max_repeat = driver, length, seed, max_repeat
        self.pool = scorer.default_pool() if pool is None else torch.as_tensor(pool, dtype=torch.int64)
        self.options = {"driver": driver, "metric": self.objective.name, "length": length, "seed": seed,
                        **scorer.describe(),
                        "pool_size": len(self.pool), "max_repeat": max_repeat, **options}
        self.out = Path(out) if out is not None else None
        self.ckpt_path = self.out.with_name(self.out.name + ".ckpt.json") if self.out else None
        self.budget, self.seconds, self.threshold = budget, seconds, threshold
        self.checkpoint_every, self.keep, self.roundtrip = checkpoint_every, keep, roundtrip
        self.results: dict[tuple[int, ...], dict] = {}
        self.used, self.elapsed_before, self.state = 0, 0.0, None
        self.calibrations: dict[int, Calibration] = {}
        self._calibrate_n = calibrate
        self._last_ckpt = time.monotonic()
        self._start = time.monotonic()
        self._load_checkpoint(resume)
        self._state_used = self.used
        self.bar = tqdm(total=budget, initial=self.used, unit="cand", unit_scale=True, desc=driver,
                        disable=not progress, dynamic_ncols=True)

    # --- budgets -----------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self._start

    def best_score(self) -> float:
        return max((r["score"] for r in self.results.values()), default=-float("inf"))

    def exhausted(self) -> bool:
        if self.budget is not None and self.used >= self.budget:
            return True
        if self.seconds is not None and self.elapsed >= self.seconds:
            return True
        return self.threshold is not None and self.best_score() >= self.threshold

    def remaining(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.used)

    # --- scoring -----------------------------------------------------------------------------
    def score(self, candidates) -> tuple[object, torch.Tensor]:
        scores = self.scorer.score_batch(candidates)
        return scores, self._account(scores)

    def score_extensions(self, prefixes, pool=None, side: str = "right") -> tuple[object, torch.Tensor]:
        """prefix + [t] for every pool token t (side="left": [t] + prefix)."""
        kw = {} if side == "right" else {"side": side}  # a scorer without left extensions still appends
        scores = self.scorer.score_extensions(prefixes, self.pool if pool is None else pool, **kw)
        return scores, self._account(scores)

    def _account(self, scores) -> torch.Tensor:
        self.used += len(scores)
        values = self.objective(scores).float().cpu()
        self.bar.update(len(scores))
        self.bar.set_postfix(best=f"{max(self.best_score(), float(values.max())):.4g}", refresh=False)
        return values

    def over_repeat(self, tokens, pool: torch.Tensor | None = None) -> torch.Tensor:
        """Bool mask over the pool (or `pool`): tokens that would occur more than max_repeat times if added."""
        pool = self.pool if pool is None else pool
        if self.max_repeat is None or len(tokens) == 0:
            return torch.zeros(len(pool), dtype=torch.bool)
        ids, counts = torch.unique(torch.as_tensor(list(tokens), dtype=torch.int64), return_counts=True)
        return torch.isin(pool, ids[counts >= self.max_repeat])

    def offer(self, candidates: list[list[int]], scores, values: torch.Tensor, step: int, top: int | None = None) -> None:
        """Remember the best of what was scored (at most `top`, default keep, per call)."""
        k = min(len(values), top or self.keep)
        best = torch.topk(values, k).indices.tolist()
        for b in best:
            ids = tuple(int(t) for t in candidates[b])
            if ids in self.results:
                continue
            # Filtered here, not at report time, so the kept set (and a resumed run's) is exactly the
            # best reportable candidates whatever moments pruning happened at.
            if self.roundtrip != "off" and not roundtrips(self.scorer.pair.tokenizer, list(ids)):
                continue
            self.results[ids] = {"token_ids": list(ids), "score": float(values[b]), **scores.record(b),
                                 "driver": self.driver, "objective": self.scorer.kind, "step": step}
        if len(self.results) > 4 * self.keep:
            self._prune()

    def _prune(self) -> None:
        ranked = sorted(self.results.items(), key=lambda kv: (-kv[1]["score"], kv[0]))[: self.keep * 2]
        self.results = dict(ranked)

    @property
    def calibrates(self) -> bool:
        """Whether results get z-scores (calibrate > 0)."""
        return self._calibrate_n > 0

    def calibration(self, length: int) -> Calibration:
        if length not in self.calibrations:
            self.calibrations[length] = Calibration.measure(self.scorer, self.objective, length, self.pool,
                                                            self._calibrate_n, self.seed)
        return self.calibrations[length]

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, state: dict, force: bool = False) -> None:
        """Remember the driver state at a step boundary; write it (and the results) every N seconds."""
        # The budget spent up to this state: work after it is redone (and recounted) on resume.
        self.state, self._state_used = state, self.used
        if force or time.monotonic() - self._last_ckpt >= self.checkpoint_every:
            self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        if self.ckpt_path is None:
            return
        payload = {"options": self.options, "used": self._state_used, "elapsed": self.elapsed, "state": self.state,
                   "results": list(self.results.values()),
                   "calibrations": {str(k): vars(c) for k, c in self.calibrations.items()}}
        _atomic_write(self.ckpt_path, json.dumps(payload))
        self.write_results()
        self._last_ckpt = time.monotonic()

    def _load_checkpoint(self, resume: bool) -> None:
        if self.ckpt_path is None or not self.ckpt_path.exists():
            return
        if not resume:
            raise ValueError(f"{self.ckpt_path} exists from an earlier run: pass --resume to continue it, "
                             "or delete it to start over")
        try:
            payload = json.loads(self.ckpt_path.read_text())
        except ValueError as exc:
            raise ValueError(f"{self.ckpt_path}: unreadable checkpoint ({exc}); delete it to start over") from None
        if payload["options"] != json.loads(json.dumps(self.options)):
            changed = sorted(k for k in set(payload["options"]) | set(self.options)
                             if payload["options"].get(k) != json.loads(json.dumps(self.options)).get(k))
            raise ValueError(f"{self.ckpt_path} was made with different options ({', '.join(changed)}); "
                             "use the same options to resume, or delete it")
        self.used, self.elapsed_before, self.state = payload["used"], payload["elapsed"], payload["state"]
        self.results = {tuple(r["token_ids"]): r for r in payload["results"]}
        self.calibrations = {int(k): Calibration(**v) for k, v in payload["calibrations"].items()}

    # --- results -----------------------------------------------------------------------------
    def ranked(self) -> list[dict]:
        """Every kept result with z against random candidates of the same length, the round-trip flag
        and its `cluster` (search/clusters.py): first the best of each cluster, best first, then the
        near-repeats, best first, so the first N rows are N different hypotheses."""
        tok = self.scorer.pair.tokenizer
        out = []
        for ids, rec in sorted(self.results.items(), key=lambda kv: (-kv[1]["score"], kv[0])):
            rec = dict(rec)
            rec["text"] = tok.decode(list(ids)) if tok is not None else None
            rec["roundtrip"] = roundtrips(tok, list(ids))
            rec["z"] = self.calibration(len(ids)).z(rec["score"]) if self._calibrate_n else None
            out.append(rec)
            if len(out) == self.keep:
                break
        seen = set()
        for rec, cluster in zip(out, cluster_ids([r["token_ids"] for r in out], tok)):
            rec["cluster"], rec["representative"] = cluster, cluster not in seen
            seen.add(cluster)
        return sorted(out, key=lambda r: not r["representative"])  # stable: score order within each part

    def write_results(self) -> list[dict]:
        ranked = self.ranked()
        if self.out is not None:
            _atomic_write(self.out, "".join(json.dumps(_ordered(r)) + "\n" for r in ranked))
        return ranked

    def __enter__(self) -> "SearchRun":
        self._old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
        self.bar.close()
        if exc_type is not None and self.state is not None:
            self._write_checkpoint()  # an interrupted run keeps what it found, and the last whole step
        elif exc_type is None:
            self.checkpoint(self.state or {}, force=True)


def _ordered(rec: dict) -> dict:
    first = ("token_ids", "text", "score", "z", "cluster", "representative", "max_abs", "kl", "band", "argmax",
             "driver", "objective", "step", "roundtrip")
    return {**{k: rec[k] for k in first if k in rec}, **{k: v for k, v in rec.items() if k not in first}}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text)
    os.replace(tmp, path)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def rng_from(state: dict | None, seed) -> np.random.Generator:
    rng = np.random.default_rng(seed)
    if state is not None:
        rng.bit_generator.state = state
    return rng
