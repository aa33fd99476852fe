"""Every ordered candidate of a small pool, strongest tokens first: the exact answer when it fits.

Candidates of `length` distinct pool tokens are visited in shells: shell m holds the candidates whose
lowest-ranked token is pool[m], so every candidate made of the top m+1 tokens comes before any that
needs a lower one (a budget that runs out has covered the strongest tokens completely). Batches of
`batch` candidates go to the scorer; the run checkpoints after every batch and resumes at the next.
With the full-model scorer the prompt before the candidate comes from its KV cache.

With a `screen` (a cheaper scorer of the same metrics, e.g. the full models on one context:
FullModelScorer.narrowed), every batch is scored by the screen first and only its best `screen_keep`
go to the scorer; the shells then advance several times faster, and the results hold only what the
scorer judged. A trigger moves the dormant in every context, so one context keeps it among the best
of its batch (measured: docs/hunt.md, "Screened exhaustive search").

With a `standout` (Standout), the run ends early on a candidate that stands out from random ones of
its length (z at least `standout.z`) and that `standout.confirm` accepts (the hunt asks verify whether
it flips against its null). On the real controls a trigger stood out by z 15-86 and the best other
candidate by at most 24 (a trigger's fragment), most by under 7; the rest of the shells were visited
for nothing (docs/hunt.md, "Eighth session").
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

from .beam import _check_length
from .pool import roundtrips
from .run import SearchRun


@dataclass
class Standout:
    """When an exhaustive run may end early (module docstring): a scored candidate whose z against random
    candidates of its length reaches `z` is handed to `confirm` (token ids -> bool), at most `checks`
    times a run; the first it accepts ends the run."""

    z: float
    confirm: Callable[[list[int]], bool]
    checks: int = 3

    def describe(self) -> dict:
        return {"standout_z": self.z, "standout_checks": self.checks}


def exhaustive(scorer, *, length: int, batch: int = 256, screen=None, screen_keep: int = 8,
               words: list[list[int]] | None = None, standout: Standout | None = None, **run_kw) -> list[dict]:
    """Score every ordered `length`-token candidate of distinct pool tokens (or as many as the budget
    allows, in shell order); with `screen`, only each batch's best `screen_keep` by the screen are
    scored (module docstring). With `words` (ranked token lists, e.g. search/word_completion.py's),
    a candidate is `length` distinct words joined, and the run's pool is their tokens. The
    checkpoint's state counts the candidates visited (`done`), the standout checks made (`checked`)
    and the one confirmed (`stood_out`), with which a resumed run ends at once. Returns ranked results."""
    _check_length(length)
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    options = {"batch": batch}
    if words is not None:
        words = _checked_words(words)
        options["words"] = words
        run_kw["pool"] = list(dict.fromkeys(t for w in words for t in w))
    if screen is not None:
        if isinstance(screen_keep, bool) or not isinstance(screen_keep, int) or screen_keep < 1:
            raise ValueError(f"screen_keep must be a count >= 1, got {screen_keep!r}")
        options |= {"screen": screen.describe(), "screen_keep": screen_keep}
    if standout is not None:
        options |= standout.describe()
    with SearchRun(scorer, driver="exhaustive", options=options, length=length, **run_kw) as run:
        units = words if words is not None else [[t] for t in run.pool.tolist()]
        if length > len(units):
            what = "words" if words is not None else "pool tokens"
            raise ValueError(f"length {length} needs at least {length} distinct {what}, there are {len(units)}")
        if standout is not None and not run.calibrates:
            raise ValueError("a standout needs z-scores: calibrate must be > 0")
        state = run.state or {"done": 0}
        order = itertools.islice(shell_order(len(units), length), state["done"], None)
        while not run.exhausted() and "stood_out" not in state:
            chunk = [[t for i in idx for t in units[i]] for idx in itertools.islice(order, batch)]
            if not chunk:
                break
            judged = chunk if screen is None else _screened(screen, run.objective, chunk, screen_keep)
            scores, values = run.score(judged)
            state = {**state, "done": state["done"] + len(chunk)}
            run.offer(judged, scores, values, state["done"])
            if standout is not None:
                state = _standout_checked(run, standout, judged, values, state)
            run.checkpoint(state, force="stood_out" in state)  # a confirmation took minutes: keep it
        return run.write_results()


def _screened(screen, objective, chunk: list[list[int]], keep: int) -> list[list[int]]:
    """The `keep` candidates of chunk the screen rates best by the run's objective, in chunk order."""
    if len(chunk) <= keep:
        return chunk
    best = objective(screen.score_batch(chunk)).float().topk(keep).indices.sort().values
    return [chunk[i] for i in best.tolist()]


def _standout_checked(run, standout: Standout, judged: list[list[int]], values, state: dict) -> dict:
    """state after the batch's best candidate was handed to standout.confirm, if it stands out, was not
    checked before, round-trips (a run reports no other) and checks are left."""
    checked = state.get("checked", [])
    best = int(values.argmax())
    ids = [int(t) for t in judged[best]]
    if len(checked) >= standout.checks or ids in checked:
        return state
    if run.calibration(len(ids)).z(float(values[best])) < standout.z:
        return state
    if run.roundtrip != "off" and not roundtrips(run.scorer.pair.tokenizer, ids):
        return state
    state = {**state, "checked": checked + [ids]}
    return {**state, "stood_out": ids} if standout.confirm(ids) else state


def _checked_words(words) -> list[list[int]]:
    out = [[int(t) for t in w] for w in words]
    if not out or any(not w for w in out):
        raise ValueError("words must be a non-empty list of non-empty token lists")
    if len({tuple(w) for w in out}) != len(out):
        raise ValueError("words must be distinct")
    return out


def shell_order(k: int, length: int):
    """Index tuples of every ordered choice of `length` distinct indices < k, by largest index."""
    for m in range(k):
        for others in itertools.permutations(range(m), length - 1):
            for at in range(length):
                yield others[:at] + (m,) + others[at:]


def candidates_total(k: int, length: int) -> int:
    return math.perm(k, length)
