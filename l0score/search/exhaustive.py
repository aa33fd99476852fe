"""Every ordered candidate of a small pool, strongest tokens first: the exact answer when it fits.

Candidates of `length` distinct pool tokens are visited in shells: shell m holds the candidates whose
lowest-ranked token is pool[m], so every candidate made of the top m+1 tokens comes before any that
needs a lower one (a budget that runs out has covered the strongest tokens completely). Batches of
`batch` candidates go to the scorer; the run checkpoints after every batch and resumes at the next.
With the full-model scorer the prompt before the candidate comes from its KV cache.
"""
from __future__ import annotations

import itertools
import math

from .beam import _check_length
from .run import SearchRun


def exhaustive(scorer, *, length: int, batch: int = 256, **run_kw) -> list[dict]:
    """Score every ordered `length`-token candidate of distinct pool tokens (or as many as the budget
    allows, in shell order). Returns ranked results."""
    _check_length(length)
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    with SearchRun(scorer, driver="exhaustive", options={"batch": batch}, length=length, **run_kw) as run:
        if length > len(run.pool):
            raise ValueError(f"length {length} needs at least {length} distinct pool tokens, the pool has {len(run.pool)}")
        state = run.state or {"done": 0}
        pool = run.pool.tolist()
        order = itertools.islice(shell_order(len(pool), length), state["done"], None)
        while not run.exhausted():
            chunk = [[pool[i] for i in idx] for idx in itertools.islice(order, batch)]
            if not chunk:
                break
            scores, values = run.score(chunk)
            state = {"done": state["done"] + len(chunk)}
            run.offer(chunk, scores, values, state["done"])
            run.checkpoint(state)
        return run.write_results()


def shell_order(k: int, length: int):
    """Index tuples of every ordered choice of `length` distinct indices < k, by largest index."""
    for m in range(k):
        for others in itertools.permutations(range(m), length - 1):
            for at in range(length):
                yield others[:at] + (m,) + others[at:]


def candidates_total(k: int, length: int) -> int:
    return math.perm(k, length)
