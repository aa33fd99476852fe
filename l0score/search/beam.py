"""Beam search by incremental extension: every beam prefix tries every pool token in one call."""
from __future__ import annotations

import torch

from .pool import roundtrips
from .run import SearchRun


def beam(scorer, *, length: int, width: int = 16, seeds=None, **run_kw) -> list[dict]:
    """Grow prefixes (from `seeds`, else from empty) one token at a time up to `length`, keeping the
    `width` best distinct prefixes (no token more than `max_repeat` times). Returns ranked results."""
    _check_length(length)
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    seeds = [list(map(int, s))[:length] for s in (seeds or [[]])]
    options = {"width": width, "seeds": seeds}
    with SearchRun(scorer, driver="beam", options=options, length=length, **run_kw) as run:
        state = run.state or {"beam": _dedup(seeds)[:width], "step": 0}
        run.checkpoint(state)
        while not run.exhausted():
            growing = [p for p in state["beam"] if len(p) < length]
            if not growing:
                break
            scores, values = run.score_extensions(growing)
            n = len(run.pool)
            values = values.view(len(growing), n)
            for row, prefix in enumerate(growing):  # diversity: cap repeats of one token
                values[row, run.over_repeat(prefix)] = -float("inf")
            flat = values.flatten()
            k = min(width, int(torch.isfinite(flat).sum()))
            best = torch.topk(flat, k).indices.tolist()
            grown = [growing[b // n] + [int(run.pool[b % n])] for b in best]
            if run.roundtrip == "search":  # keep only prefixes whose text re-tokenizes to themselves
                grown = [g for g in grown if roundtrips(scorer.pair.tokenizer, g)]
            done = [p for p in state["beam"] if len(p) >= length]
            # Every full-length candidate of this step competes for the results, not only the beam.
            full_rows = torch.tensor([len(p) + 1 == length for p in growing]).repeat_interleave(n)
            full_vals = flat.masked_fill(~full_rows, -float("inf"))
            n_full = int(torch.isfinite(full_vals).sum())
            if n_full:
                idx = torch.topk(full_vals, min(run.keep, n_full)).indices
                cands = [growing[b // n] + [int(run.pool[b % n])] for b in idx.tolist()]
                run.offer(cands, scores[idx], flat[idx], state["step"] + 1)
            state = {"beam": _dedup(done + grown)[:width], "step": state["step"] + 1}
            run.checkpoint(state)
        if not run.results and state["beam"]:  # seeds already at full length
            full = [p for p in state["beam"] if len(p) == length]
            if full:
                scores, values = run.score(full)
                run.offer(full, scores, values, state["step"])
        return run.write_results()


def _dedup(seqs):
    seen, out = set(), []
    for s in seqs:
        if tuple(s) not in seen:
            seen.add(tuple(s))
            out.append(list(s))
    return out


def _check_length(length: int) -> None:
    if not isinstance(length, int) or length <= 0:
        raise ValueError(f"length must be a positive number of tokens, got {length!r}")
