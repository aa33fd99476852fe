"""Turn what a user passes to `score_batch` into validated, packed dependent rows.

Type and nesting checks happen here; range and length checks and the packing itself happen in the
native module (`l0score._native.pack_dependent`), which names the offending candidate.
"""
from __future__ import annotations


import numpy as np
import torch

from .. import _native
from .types import PackedBatch


def _int_row(row, b: int) -> np.ndarray:
    if isinstance(row, torch.Tensor):
        row = row.detach().cpu().numpy()
    if isinstance(row, (str, bytes)):
        raise TypeError(f"candidate {b}: expected a sequence of integer token ids, got a string {row!r}")
    try:
        arr = np.asarray(row)
    except ValueError as exc:
        raise TypeError(f"candidate {b}: not a flat sequence of token ids ({exc})") from exc
    if arr.ndim == 0:
        raise TypeError(
            f"candidate {b}: expected a sequence of token ids, got the scalar {row!r} "
            "(token_ids must be a list of candidates, e.g. [[1, 2, 3]])"
        )
    if arr.ndim != 1 or arr.dtype == object:
        raise TypeError(f"candidate {b}: expected a flat sequence of token ids (wrong nesting)")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"candidate {b}: token ids must be integers, got dtype {arr.dtype} ({arr[:4].tolist()}...)")
    return arr.astype(np.int64, copy=False)


def flatten_candidates(token_ids, lengths=None) -> tuple[np.ndarray, np.ndarray]:
    """(flat ids, lengths) from a list of lists or a 2-D integer array (+ lengths)."""
    if isinstance(token_ids, torch.Tensor):
        if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
            raise TypeError(f"token_ids must be an integer tensor, got dtype {token_ids.dtype}")
        token_ids = token_ids.detach().cpu().numpy()
    if isinstance(token_ids, np.ndarray) and token_ids.dtype != object:
        if token_ids.ndim != 2:
            raise TypeError(f"token_ids array must be 2-D [batch, length], got shape {token_ids.shape}")
        if token_ids.dtype.kind not in "iu":
            raise TypeError(f"token_ids must be integers, got dtype {token_ids.dtype}")
        arr = token_ids.astype(np.int64, copy=False)
        if lengths is None:
            lens = np.full(arr.shape[0], arr.shape[1], dtype=np.int64)
        else:
            lens = _lengths(lengths, arr.shape[0])
            for b in np.flatnonzero(lens > arr.shape[1])[:1]:
                raise ValueError(f"candidate {b}: length {lens[b]} exceeds the array width {arr.shape[1]}")
        mask = np.arange(arr.shape[1])[None, :] < lens[:, None]
        return arr[mask], lens
    if isinstance(token_ids, np.ndarray):  # dtype=object: numpy's ragged array
        if lengths is None:
            raise TypeError("token_ids is a ragged array: pass a list of lists, or a padded 2-D array with lengths")
        token_ids = list(token_ids)
    if isinstance(token_ids, (str, bytes)) or not hasattr(token_ids, "__len__"):
        raise TypeError(f"token_ids must be a list of candidates or a 2-D integer array, got {type(token_ids).__name__}")
    rows = [_int_row(row, b) for b, row in enumerate(token_ids)]
    lens = np.array([len(r) for r in rows], dtype=np.int64)
    if lengths is not None:
        given = _lengths(lengths, len(rows))
        for b in np.flatnonzero(given > lens)[:1]:
            raise ValueError(f"candidate {b}: length {given[b]} exceeds its {lens[b]} ids")
        rows = [r[:n] for r, n in zip(rows, given)]
        lens = given
    flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return flat, lens


def _lengths(lengths, n: int) -> np.ndarray:
    lens = np.asarray(lengths.detach().cpu() if isinstance(lengths, torch.Tensor) else lengths)
    if lens.ndim != 1 or lens.shape[0] != n:
        raise ValueError(f"lengths must have one entry per candidate ({n}), got shape {lens.shape}")
    if lens.size and lens.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {lens.dtype}")
    return lens.astype(np.int64)


def pack(token_ids, lengths, suffix_ids, vocab_rows: int, max_cand_len: int) -> PackedBatch:
    """Validate and pack; raises ValueError/TypeError naming the candidate and the problem."""
    flat, lens = flatten_candidates(token_ids, lengths)
    if len(lens) == 0:
        raise ValueError("token_ids holds no candidates")
    ids, dep_len = _native.pack_dependent(flat, lens, np.asarray(suffix_ids, dtype=np.int64), vocab_rows, max_cand_len)
    return PackedBatch(torch.from_numpy(ids), torch.from_numpy(lens), torch.from_numpy(dep_len))


def candidate_lists(token_ids, vocab: int) -> list[list[int]]:
    """Candidates as plain id lists for the scorers that run whole models (full-model, first-module),
    each checked: non-empty, integer ids, inside the vocabulary; errors name the candidate."""
    if hasattr(token_ids, "tolist"):  # a tensor or an array
        token_ids = token_ids.tolist()
    cands = []
    for b, c in enumerate(token_ids):
        ids = list(c)
        if not ids:
            raise ValueError(f"candidate {b}: empty token sequence")
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int):
                raise TypeError(f"candidate {b}: token ids must be integers, got {t!r}")
            if not 0 <= t < vocab:
                raise ValueError(f"candidate {b}: token id {t} outside [0, {vocab})")
        cands.append(ids)
    if not cands:
        raise ValueError("no candidates to score")
    return cands
