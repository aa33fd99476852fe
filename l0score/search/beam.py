"""Beam search by incremental extension: every beam fragment tries every pool token in one call.

Fragments grow on the right (`prefix + [t]`, the incremental extension kernel, exact over the whole
pool) and, with grow="both" (the default), on the left (`[t] + fragment`), so a seed from the middle
of a trigger grows into the whole trigger. A left extension changes every row of the fragment, so
it runs the general kernel; `left_screen` keeps that affordable: the left tokens tried are, per
scored head, the `left_screen` tokens whose exact cells with the fragment's tokens are largest
(search/cells.py), and those are scored exactly. left_screen=None tries the whole pool on the left.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .cells import KeyCells
from .pool import roundtrips
from .run import SearchRun

GROW = ("both", "right")


@dataclass
class _Block:
    """What one extension call scored: fragments x tokens, flattened row-major."""

    fragments: list[list[int]]
    tokens: torch.Tensor
    side: str
    scores: object
    values: torch.Tensor

    def candidate(self, b: int) -> list[int]:
        f, t = self.fragments[b // len(self.tokens)], int(self.tokens[b % len(self.tokens)])
        return f + [t] if self.side == "right" else [t] + f


def beam(scorer, *, length: int, width: int = 16, seeds=None, grow: str = "both", left_screen: int | None = 64,
         cells: KeyCells | None = None, **run_kw) -> list[dict]:
    """Grow fragments (from `seeds`, else from empty) one token at a time up to `length`, keeping the
    `width` best distinct fragments (no token more than `max_repeat` times). Returns ranked results.
    `cells`: a KeyCells of the same scorer and pool, reused across calls (else built on first use)."""
    _check_length(length)
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if grow not in GROW:
        raise ValueError(f"grow must be one of {', '.join(GROW)}, got {grow!r}")
    if left_screen is not None and left_screen <= 0:
        raise ValueError(f"left_screen must be positive (or None for the whole pool), got {left_screen}")
    seeds = [list(map(int, s))[:length] for s in (seeds or [[]])]
    options = {"width": width, "seeds": seeds, "grow": grow, "left_screen": left_screen}
    with SearchRun(scorer, driver="beam", options=options, length=length, **run_kw) as run:
        state = run.state or {"beam": _dedup(seeds)[:width], "step": 0}
        run.checkpoint(state)
        while not run.exhausted():
            growing = [p for p in state["beam"] if len(p) < length]
            if not growing:
                break
            blocks = [_right(run, growing)]
            if grow == "both":
                if cells is None and left_screen is not None and scorer.kind == "layer0":  # exact cells are Layer-0's
                    cells = KeyCells(run.scorer, run.pool)
                blocks += [_left(run, f, cells, left_screen) for f in growing if f]
            for block in blocks:
                _offer_full(run, block, length, state["step"] + 1)
            grown = _best(blocks, width)
            if run.roundtrip == "search":  # keep only fragments whose text re-tokenizes to themselves
                grown = [g for g in grown if roundtrips(scorer.pair.tokenizer, g)]
            done = [p for p in state["beam"] if len(p) >= length]
            state = {"beam": _dedup(done + grown)[:width], "step": state["step"] + 1}
            run.checkpoint(state)
        if not run.results and state["beam"]:  # seeds already at full length
            full = [p for p in state["beam"] if len(p) == length]
            if full:
                scores, values = run.score(full)
                run.offer(full, scores, values, state["step"])
        return run.write_results()


def _right(run, growing) -> _Block:
    scores, values = run.score_extensions(growing)
    n = len(run.pool)
    view = values.view(len(growing), n)
    for row, prefix in enumerate(growing):  # diversity: cap repeats of one token
        view[row, run.over_repeat(prefix)] = -float("inf")
    return _Block(growing, run.pool, "right", scores, values)


def _left(run, fragment, cells, left_screen) -> _Block:
    tokens = run.pool if cells is None else run.pool[cells.left_screen(fragment, left_screen)]
    scores, values = run.score_extensions([fragment], pool=tokens, side="left")
    values[run.over_repeat(fragment, tokens)] = -float("inf")
    return _Block([fragment], tokens, "left", scores, values)


def _best(blocks, width) -> list[list[int]]:
    """The width best distinct grown fragments over all blocks."""
    values = torch.cat([b.values for b in blocks])
    k = min(2 * width, int(torch.isfinite(values).sum()))
    starts = torch.tensor([0] + [len(b.values) for b in blocks]).cumsum(0)
    out = []
    for i in torch.topk(values, k).indices.tolist():
        n = int(torch.searchsorted(starts, i, right=True)) - 1
        out.append(blocks[n].candidate(i - int(starts[n])))
    return _dedup(out)[:width]


def _offer_full(run, block, length, step) -> None:
    """Every full-length candidate of this step competes for the results, not only the beam."""
    n = len(block.tokens)
    full_rows = torch.tensor([len(f) + 1 == length for f in block.fragments]).repeat_interleave(n)
    full_vals = block.values.masked_fill(~full_rows, -float("inf"))
    n_full = int(torch.isfinite(full_vals).sum())
    if n_full:
        idx = torch.topk(full_vals, min(run.keep, n_full)).indices
        run.offer([block.candidate(b) for b in idx.tolist()], block.scores[idx], block.values[idx], step)


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
