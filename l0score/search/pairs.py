"""Exact exhaustive scan over (query token, key token, relative offset).

At Layer 0 every logit is q(a)^T R(-r) k(b) / sqrt(D) for query token a, key token b, offset
r = i - j (docs/architecture.md#the-layer-0-score-exactly), so the largest |dS| any sequence can contain is found by scanning triples:

    dS_h(a, b, r) = [rot_r(q_dorm(a)) . k_dorm(b) - rot_r(q_base(a)) . k_base(b)] / sqrt(D) - baseline_h(r)

For each head and offset this is one GEMM [N, 2D] x [2D, N] over the pool (rotated dormant and
negated base queries side by side against both models' keys), done in blocks with a running
top-k so the N x N matrix never exists. Offset 0 is a token attending to itself (a == b only).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..core.reference import rope_angles, rotate


def pair_scan(scorer, pool: torch.Tensor, offsets=(1,), top: int = 100, block: int = 4096, progress: bool = True,
              checkpoint: str | Path | None = None, resume: bool = False, seconds: float | None = None,
              use_kernel: bool = True, executor=None) -> dict:
    """Top `top` triples overall and per scored head, ranked by |dS|; values are signed dS
    (minus the bias baseline when the scorer uses baseline="bias").

    With `checkpoint`, finished heads are saved as they complete and `resume` skips them; `seconds`
    stops after the head that crosses it ("complete": False in the result). `use_kernel=False` runs
    the torch code below on the backend's own table values even when the backend has a pair_topk
    kernel (the reference for checks and benchmarks). An `executor` (l0score.core.protocols.Executor,
    e.g. l0score.cluster.RayExecutor) runs one task per (head, offset) on the backend's kernel; the
    merged result and the checkpoint file are the same as in one process (None: here)."""
    offsets, pool, pair_topk = _checked(scorer, pool, offsets, top, use_kernel, executor)
    options = {"offsets": offsets, "top": top, "heads": list(scorer.heads), "baseline": scorer.baseline_kind,
               "pool": hashlib.sha1(pool.numpy().tobytes()).hexdigest()}
    per_head = _load(checkpoint, options) if resume else {}
    if checkpoint is not None and not resume and Path(checkpoint).exists():
        raise ValueError(f"{checkpoint} exists from an earlier scan: pass --resume to continue it, or delete it")
    start_time = time.monotonic()
    bar = tqdm(total=len(scorer.heads) * len(offsets) * len(pool), unit="row", unit_scale=True, desc="pairs",
               disable=not progress)
    todo = [(n, h) for n, h in enumerate(scorer.heads) if h not in per_head]
    bar.update((len(scorer.heads) - len(todo)) * len(offsets) * len(pool))
    for h, best in _finished_heads(scorer, pool, todo, offsets, top, block, pair_topk, bar, executor):
        per_head[h] = best.rows(pool, h)
        if checkpoint is not None:
            _save(checkpoint, options, per_head)
        if seconds is not None and time.monotonic() - start_time > seconds:
            break
    per_head = {h: per_head[h] for h in scorer.heads if h in per_head}  # head order, however they finished
    bar.close()
    complete = len(per_head) == len(scorer.heads)
    if complete and checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    overall = sorted((row for rows in per_head.values() for row in rows), key=lambda x: -x["abs"])[:top]
    _add_texts(scorer.pair.tokenizer, overall + [r for rows in per_head.values() for r in rows])
    return {"top": overall, "per_head": per_head, "complete": complete}


def _checked(scorer, pool, offsets, top, use_kernel, executor):
    """The offsets as ints, the pool as an int64 tensor, and the backend's own exact top-k per
    (head, offset) when it has one and it is wanted: pair_topk(pool, head, offset, top, shift) ->
    (signed values, query index, key index into pool); None selects the torch reference."""
    cfg = scorer.pair.config
    offsets = [int(r) for r in offsets]
    if not offsets or min(offsets) < 0 or max(offsets) >= cfg.max_positions:
        raise ValueError(f"pair-scan offsets must be in [0, {cfg.max_positions}), got {offsets}")
    if top <= 0:
        raise ValueError(f"top must be positive, got {top}")
    pair_topk = getattr(scorer.backend, "pair_topk", None) if use_kernel else None
    if executor is not None and pair_topk is None:
        raise ValueError("a pair scan through an executor runs the backend's pair_topk kernel: use the native backend "
                         "(and use_kernel=True), or no executor")
    return offsets, torch.as_tensor(pool, dtype=torch.int64), pair_topk


def _finished_heads(scorer, pool, todo, offsets, top, block, pair_topk, bar, executor):
    """(head, _TopK) as each head of `todo` finishes: here, lazily (a head starts only after the time
    check of the one before), or from the executor's tasks, one per (head, offset)."""
    if executor is None:
        keys = None if pair_topk is not None else _lookup(scorer, pool)  # keys at position 0: no rotation
        return ((h, _scan_head(scorer, pool, n, h, offsets, top, block, pair_topk, keys, bar)) for n, h in todo)
    shifts = {(h, r): float(scorer._baseline[n, r]) for n, h in todo for r in offsets}
    shards = executor.pair_shards(scorer, pool, [h for _, h in todo], offsets, top, shifts)
    return ((h, _merge_offsets(results, offsets, top, bar, len(pool))) for h, results in shards)


def _add_texts(tok, rows) -> None:
    for row in rows:
        if tok is not None and "query_text" not in row:
            row["query_text"], row["key_text"] = tok.decode([row["query_token"]]), tok.decode([row["key_token"]])


def _scan_head(scorer, pool, n_head, h, offsets, top, block, pair_topk, keys, bar) -> "_TopK":
    """One head over every offset in this process: the backend's kernel, or the torch reference."""
    cfg, device = scorer.pair.config, scorer.device
    shift_of = scorer._baseline[n_head]
    best = _TopK(top)
    if pair_topk is not None:
        for r in offsets:
            best.add(*pair_topk(pool, h, r, top, float(shift_of[r])), r)
            bar.update(len(pool))
        return best
    _, kb, _, kd = keys
    g = h // cfg.group
    head_keys = torch.cat((kd[:, g], kb[:, g]), -1)  # [N, 2D]
    scale = 1.0 / math.sqrt(cfg.head_dim)
    for r in offsets:
        cos, sin = rope_angles(torch.tensor([r], device=device), cfg.head_dim, cfg.rope_theta)
        shift = float(shift_of[r])
        for start in range(0, len(pool), block):
            qb, _, qd, _ = _lookup(scorer, pool[start : start + block])
            queries = torch.cat((rotate(qd[:, h], cos, sin), -rotate(qb[:, h], cos, sin)), -1)
            if r == 0:
                vals = (queries * head_keys[start : start + block]).sum(-1) * scale - shift
                idx = start + torch.arange(len(vals), device=device)
                best.add(vals, idx, idx, r)
            else:
                for kstart in range(0, len(pool), block * 4):
                    vals = queries @ head_keys[kstart : kstart + block * 4].T * scale - shift
                    best.add_matrix(vals, start, kstart, r)
            bar.update(len(queries))
    return best


def _merge_offsets(results, offsets, top, bar, n) -> "_TopK":
    """A head's per-offset kernel results, merged in offset order exactly as _scan_head merges them."""
    best = _TopK(top)
    for r, result in zip(offsets, results):
        best.add(*result, r)
        bar.update(n)
    return best


def _save(path, options, per_head) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps({"options": options, "per_head": {str(h): rows for h, rows in per_head.items()}}))
    os.replace(tmp, path)


def _load(path, options) -> dict:
    if path is None or not Path(path).exists():
        return {}
    payload = json.loads(Path(path).read_text())
    if payload["options"] != options:
        raise ValueError(f"{path} was made by a scan with different options; use the same options or delete it")
    return {int(h): rows for h, rows in payload["per_head"].items()}


def _lookup(scorer, ids):
    return scorer.backend.lookup(ids.to(scorer.device))


class _TopK:
    """Running top-k by |value| over (query index, key index, offset) triples."""

    def __init__(self, k: int):
        self.k = k
        self.vals = torch.empty(0)
        self.idx = torch.empty(0, 3, dtype=torch.int64)

    def threshold(self) -> float:
        return float(self.vals.abs().min()) if len(self.vals) >= self.k else -1.0

    def add(self, vals, q_idx, k_idx, r):
        keep = vals.abs() > self.threshold()
        self._merge(vals[keep].cpu(), torch.stack((q_idx[keep], k_idx[keep], torch.full_like(q_idx[keep], r)), -1).cpu())

    def add_matrix(self, vals, q_start, k_start, r):
        mask = vals.abs() > self.threshold()
        if len(self.vals) < self.k:  # not full yet: take the block's own top-k
            flat = vals.abs().flatten()
            kth = torch.topk(flat, min(self.k, flat.numel())).values[-1]
            mask = vals.abs() >= kth
        qi, ki = mask.nonzero(as_tuple=True)
        self._merge(vals[qi, ki].cpu(), torch.stack((qi + q_start, ki + k_start, torch.full_like(qi, r)), -1).cpu())

    def _merge(self, vals, idx):
        vals, idx = torch.cat((self.vals, vals)), torch.cat((self.idx, idx))
        order = torch.argsort(vals.abs(), descending=True, stable=True)[: self.k]
        self.vals, self.idx = vals[order], idx[order]

    def rows(self, pool, head) -> list[dict]:
        return [{"query_token": int(pool[q]), "key_token": int(pool[k]), "offset": int(r), "head": head,
                 "value": float(v), "abs": abs(float(v))} for v, (q, k, r) in zip(self.vals.tolist(), self.idx.tolist())]


def seeds_from_pairs(scan: dict, k: int) -> list[list[int]]:
    """Two-token seed prefixes [key token, query token] from the best triples (distinct, best first)."""
    seeds = []
    for row in scan["top"]:
        seed = [row["key_token"], row["query_token"]]
        if seed not in seeds:
            seeds.append(seed)
        if len(seeds) == k:
            break
    return seeds
