"""Exact coordinate ascent: each position tries every pool token in one batched call."""
from __future__ import annotations

import numpy as np
import torch

from .beam import _check_length
from .run import SearchRun, rng_from


def coord(scorer, *, length: int, restarts: int = 4, max_sweeps: int = 8, seeds=None, best_swap_first: bool = False,
          **run_kw) -> list[dict]:
    """From each start (seeds first, each at a random place among random pool tokens, then random
    sequences), set one position at a time to its best pool token; a sweep visits every position; a
    start ends when a sweep improves nothing (or after max_sweeps). With best_swap_first, a seeded start
    first takes its single best swap over every position (_best_swap): for seeds that are evidence
    as a whole, such as an anchor beside a partner (off by default: on a planted 5-token Layer-0
    trigger it led seeded starts to a lower optimum). No gradients: every swap is scored exactly."""
    _check_length(length)
    if restarts <= 0 or max_sweeps <= 0:
        raise ValueError(f"restarts and max_sweeps must be positive, got {restarts} and {max_sweeps}")
    seeds = [list(map(int, s))[:length] for s in (seeds or [])]
    options = {"restarts": restarts, "max_sweeps": max_sweeps, "seeds": seeds,
               **({"best_swap_first": True} if best_swap_first else {})}  # old checkpoints resume
    with SearchRun(scorer, driver="coord", options=options, length=length, **run_kw) as run:
        pool = run.pool
        state = run.state
        if state is None:
            rng = rng_from(None, [run.seed, 1])
            state = {"restart": 0, "seq": None, "value": None, "pos": 0, "sweep": 0, "improved": False,
                     "rng": rng.bit_generator.state}
        while state["restart"] < restarts and not run.exhausted():
            rng = rng_from(state["rng"], [run.seed, 1])
            if state["seq"] is None:
                seq = pool[rng.integers(0, len(pool), length)].tolist()
                if state["restart"] < len(seeds):  # a seed goes in at a random place: a pair can sit anywhere
                    seed = seeds[state["restart"]]
                    at = int(rng.integers(0, length - len(seed) + 1))
                    seq[at : at + len(seed)] = seed
                scores, values = run.score([seq])
                run.offer([seq], scores, values, 0)
                state.update(seq=seq, value=float(values[0]), pos=0, sweep=0, improved=False,
                             rng=rng.bit_generator.state, best_swap=best_swap_first and state["restart"] < len(seeds))
                run.checkpoint(state)
                continue
            if state.get("best_swap"):  # a seeded start: its best single swap first
                state.update(_best_swap(run, list(state["seq"]), state["value"]), best_swap=False)
                run.checkpoint(state)
                continue
            seq, pos = list(state["seq"]), state["pos"]
            cands, values, b = _swaps(run, seq, [pos], step=state["sweep"] * length + pos + 1)
            improved = state["improved"]
            if _improves(float(values[b]), state["value"]):
                seq[pos], improved = int(pool[b]), True
                state["value"] = float(values[b])
            pos += 1
            if pos == length:
                if not improved or state["sweep"] + 1 >= max_sweeps:
                    state.update(restart=state["restart"] + 1, seq=None)
                    run.checkpoint(state)
                    continue
                state["sweep"] += 1
                pos, improved = 0, False
            state.update(seq=seq, pos=pos, improved=improved)
            run.checkpoint(state)
        return run.write_results()


def _swaps(run, seq: list[int], positions: list[int], step: int):
    """Every pool token at each of ``positions`` of seq (the rest kept), scored in one batch, over-repeats
    masked, offered to the run's results: (candidates, values, index of the best)."""
    pool = run.pool.numpy()
    cands = np.tile(np.asarray(seq, dtype=np.int64), (len(positions) * len(pool), 1))
    for i, pos in enumerate(positions):
        cands[i * len(pool):(i + 1) * len(pool), pos] = pool
    scores, values = run.score(cands)
    for i, pos in enumerate(positions):
        values[i * len(pool):(i + 1) * len(pool)][run.over_repeat(seq[:pos] + seq[pos + 1:])] = -float("inf")
    run.offer(cands, scores, values, step, top=8)
    return cands, values, int(torch.argmax(values))


def _improves(new: float, old: float) -> bool:
    return new > old + 1e-7 * max(1.0, abs(old))


def _best_swap(run, seq: list[int], value: float) -> dict:
    """Every position's every pool token in one pass, and the single best swap taken. A seed is
    evidence: the cyclic sweep would change its first token before the others (on the real full
    control of seed 1 it swapped ' turtle' out of [' turtle', ' implement'] for 'edipus' before the
    second place was tried, where ' piano' was)."""
    cands, values, b = _swaps(run, seq, list(range(len(seq))), step=1)
    if _improves(float(values[b]), value):
        seq, value = cands[b].tolist(), float(values[b])
    return {"seq": seq, "value": value, "pos": 0, "sweep": 0, "improved": False}
