"""Exact pair scan: the `top` largest |dS| cells of one head at one relative offset over a token pool.

For query head h (KV head g = h // group), offset r and pool tokens a, b (docs/architecture.md#the-layer-0-score-exactly):

    v(a, b) = [rot_r(q_d(a)) . k_d(b) - rot_r(q_b(a)) . k_b(b)] / sqrt(D) - shift

i.e. one GEMM [N, 2D] x [2D, N] ([rot q_d | -rot q_b] against [k_d | k_b]) per (head, offset);
r = 0 is a token attending to itself, the diagonal a == b only. The N x N matrix never exists:

* pass 1 computes every [BLOCK_Q, BLOCK_K] tile (one fp32 accumulator, four dots per slice of
  the head dimension) and keeps, per query row and per key split (a contiguous range of
  `keys_per_split` keys), the max |v|: an [N, S] array. Each entry is the value of a distinct
  cell, so its `top`-th largest entry t is a lower bound on the `top`-th largest cell, and every
  one of the top cells lies in an entry >= t (at most `top` entries, plus ties);
* pass 2 recomputes only the rows that own such an entry, and within them only the key splits
  whose entry reaches t, and appends every cell with |v| >= t to a compacted buffer: one atomic
  add per tile reserves the tile's slots, a prefix sum places its cells. A buffer too small for
  the count is retried once at the exact size (the counter keeps counting past the capacity);
* the host sorts the few survivors (|v| descending, then query, then key index).

Pass 2 costs about top * keys_per_split cells against N^2 for pass 1. Its threshold is t lowered
by 1e-5 relative, so a cell whose two computations differ in the last bits cannot drop out (it only
adds survivors); offset 0 runs the same two passes on a square tile of the rows against themselves.

Choices: RoPE is applied to the query slice in registers, with cos/sin row r of the resident tables
(computed by torch exactly as the reference does; tl.cos is approximate on a GPU at large angles),
rather than materialising rotated [N, 2D] queries per (head, offset) in torch: both GEMM operands
are read straight from the resident token table by token id (no per-offset copy; a bf16 table stays
bf16 in memory and is upcast right after the load), and re-rotating the [BLOCK_Q, BLOCK_D] query
slice for every key tile costs ~5% of the dots' FLOPs. Keys sit at position 0 (no rotation). The
halves [lo | hi] of a head (Qwen2's rotate_half split) are sliced BLOCK_D (>= 16) columns at a time,
so any even head_dim works and every tl.dot tile is >= 16 in each dimension. Dots are fp32 with
input_precision="ieee" by default (TF32 would cost ~1e-3 relative on dS). One fixed config.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._launch import TABLE_DTYPES, Launcher, check_ids, check_tensor

_EMIT_MARGIN = 1e-5  # pass-2 threshold = t * (1 - margin)
_MAX_SURVIVORS = 1 << 26


@triton.jit
def _tile_values(tab_b_ptr, tab_d_ptr, stride_tab, q_tok, q_ok, k_tok, k_ok, q_col, k_col, cos_row, sin_row,
                 scale, shift, HALF: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr):
    """v [len(q_tok), len(k_tok)] of the tile: rotated dormant and negated rotated base query halves
    against both models' unrotated key halves, one accumulator, BLOCK_D head columns at a time."""
    acc = tl.zeros((q_tok.shape[0], k_tok.shape[0]), dtype=tl.float32)
    q_row = q_tok.to(tl.int64)[:, None] * stride_tab + q_col
    k_row = k_tok.to(tl.int64)[None, :] * stride_tab + k_col
    for d0 in range(0, HALF, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < HALF
        cos = tl.load(cos_row + d, mask=d_ok, other=0.0)[None, :]
        sin = tl.load(sin_row + d, mask=d_ok, other=0.0)[None, :]
        qm = q_ok[:, None] & d_ok[None, :]
        km = d_ok[:, None] & k_ok[None, :]
        qo = q_row + d[None, :]
        ko = k_row + d[:, None]  # keys loaded transposed: [BLOCK_D, keys]
        lo = tl.load(tab_d_ptr + qo, mask=qm, other=0.0).to(tl.float32)
        hi = tl.load(tab_d_ptr + qo + HALF, mask=qm, other=0.0).to(tl.float32)
        k_lo = tl.load(tab_d_ptr + ko, mask=km, other=0.0).to(tl.float32)
        k_hi = tl.load(tab_d_ptr + ko + HALF, mask=km, other=0.0).to(tl.float32)
        acc = tl.dot(lo * cos - hi * sin, k_lo, acc, input_precision=DOT_PREC)
        acc = tl.dot(hi * cos + lo * sin, k_hi, acc, input_precision=DOT_PREC)
        lo = tl.load(tab_b_ptr + qo, mask=qm, other=0.0).to(tl.float32)
        hi = tl.load(tab_b_ptr + qo + HALF, mask=qm, other=0.0).to(tl.float32)
        k_lo = tl.load(tab_b_ptr + ko, mask=km, other=0.0).to(tl.float32)
        k_hi = tl.load(tab_b_ptr + ko + HALF, mask=km, other=0.0).to(tl.float32)
        acc = tl.dot(hi * sin - lo * cos, k_lo, acc, input_precision=DOT_PREC)
        acc = tl.dot(-(hi * cos + lo * sin), k_hi, acc, input_precision=DOT_PREC)
    return acc * scale - shift


@triton.jit
def _emit(v, hit, a, b, cnt_ptr, val_ptr, qi_ptr, ki_ptr, capacity):
    """Append the tile's hit cells (value, query index a, key index b) at slots reserved by one atomic add."""
    h32 = hit.to(tl.int32)
    row_n = tl.sum(h32, 1)
    n = tl.sum(row_n, 0)
    if n > 0:
        start = tl.atomic_add(cnt_ptr, n)
        slot = start + (tl.cumsum(row_n, 0) - row_n)[:, None] + tl.cumsum(h32, 1) - 1
        m = hit & (slot < capacity)
        tl.store(val_ptr + slot, v, mask=m)
        tl.store(qi_ptr + slot, tl.broadcast_to(a[:, None], v.shape), mask=m)
        tl.store(ki_ptr + slot, tl.broadcast_to(b[None, :], v.shape), mask=m)


@triton.jit
def _pair_kernel(
    ids_ptr, rows_ptr, cos_ptr, sin_ptr, tab_b_ptr, tab_d_ptr,
    max_ptr, cnt_ptr, val_ptr, qi_ptr, ki_ptr,
    n_rows, n_keys, keys_per_split, n_splits, q_col, k_col, offset, scale, shift, thresh, capacity, stride_tab,
    HALF: tl.constexpr, DIAG: tl.constexpr, EMIT: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    s = tl.program_id(1)
    slots = pid * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = slots < n_rows
    if EMIT:  # pass 2: the selected rows (pool indices)
        a = tl.load(rows_ptr + slots, mask=q_ok, other=0)
    else:
        a = slots
    q_tok = tl.load(ids_ptr + a, mask=q_ok, other=0)
    cos_row = cos_ptr + offset * HALF
    sin_row = sin_ptr + offset * HALF

    if DIAG:  # offset 0: each row against its own key only (a square tile over the same rows)
        v = _tile_values(tab_b_ptr, tab_d_ptr, stride_tab, q_tok, q_ok, q_tok, q_ok, q_col, k_col, cos_row, sin_row,
                         scale, shift, HALF, BLOCK_D, DOT_PREC)
        valid = (tl.arange(0, BLOCK_Q)[:, None] == tl.arange(0, BLOCK_Q)[None, :]) & q_ok[:, None]
        av = tl.where(valid, tl.abs(v), -1.0)
        if EMIT:
            _emit(v, valid & (av >= thresh), a, a, cnt_ptr, val_ptr, qi_ptr, ki_ptr, capacity)
        else:
            row_max = tl.max(av, 1)
    else:
        k_lo = s * keys_per_split
        k_hi = tl.minimum(k_lo + keys_per_split, n_keys)
        if EMIT:  # no row of this tile reached the threshold in this split (pass-1 maxima): skip it
            row_max = tl.load(max_ptr + a.to(tl.int64) * n_splits + s, mask=q_ok, other=-1.0)
            k_hi = tl.where(tl.max(row_max, 0) >= thresh, k_hi, k_lo)
        else:
            row_max = tl.full((BLOCK_Q,), -1.0, tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            b = k0 + tl.arange(0, BLOCK_K)
            k_ok = b < k_hi
            k_tok = tl.load(ids_ptr + b, mask=k_ok, other=0)
            v = _tile_values(tab_b_ptr, tab_d_ptr, stride_tab, q_tok, q_ok, k_tok, k_ok, q_col, k_col, cos_row,
                             sin_row, scale, shift, HALF, BLOCK_D, DOT_PREC)
            valid = q_ok[:, None] & k_ok[None, :]
            av = tl.where(valid, tl.abs(v), -1.0)
            if EMIT:
                _emit(v, valid & (av >= thresh), a, b, cnt_ptr, val_ptr, qi_ptr, ki_ptr, capacity)
            else:
                row_max = tl.maximum(row_max, tl.max(av, 1))
    if not EMIT:
        tl.store(max_ptr + slots.to(tl.int64) * n_splits + s, row_max, mask=q_ok)


# H100 (sm_90), checked with aot_check.py for D = 128: 158-202 registers, no spills in either pass
# (4 warps, head slices of 32 or 128 x 128 tiles spill). One config on purpose: both passes must
# tile identically so that a cell's two computations agree; the interpreter uses the same tiles.
_GPU_CONFIG = triton.Config({"BLOCK_Q": 64, "BLOCK_K": 64, "BLOCK_D": 16}, num_warps=8, num_stages=2)
_launch = Launcher(_pair_kernel, [_GPU_CONFIG],
                   interp_config=triton.Config({"BLOCK_Q": 64, "BLOCK_K": 64, "BLOCK_D": 16}, num_warps=4,
                                               num_stages=1),
                   key=["HALF", "DIAG", "EMIT"])

DEFAULT_KEYS_PER_SPLIT = 4096


class PairTopK(NamedTuple):
    """The top cells, best first: values [k] fp32 (signed v), query_index / key_index [k] int64 into the pool."""

    values: torch.Tensor
    query_index: torch.Tensor
    key_index: torch.Tensor


def pair_topk(table_b: torch.Tensor, table_d: torch.Tensor, ids: torch.Tensor, rope_cos: torch.Tensor,
              rope_sin: torch.Tensor, *, q_col: int, k_col: int, head_dim: int, offset: int, top: int,
              shift: float = 0.0, scale: float | None = None, dot_precision: str = "ieee",
              keys_per_split: int = DEFAULT_KEYS_PER_SPLIT, check_id_range: bool = True) -> PairTopK:
    """Exact top `top` cells by |v| of one (query head, KV head, offset) over the pool `ids`.

    table_b/table_d [V, C] fp32 or bf16 pre-RoPE rows of the base and dormant model (rows may be
    strided, columns contiguous; e.g. the halves of TritonBackend's packed table); the query head
    is columns [q_col, q_col + D), its KV head [k_col, k_col + D). ids [N] int32/int64 table rows of
    the pool. rope_cos/rope_sin [P, D/2] fp32, P > offset. shift: the baseline subtracted from every
    cell; scale defaults to 1/sqrt(D). Returns min(top, cells) cells, cells = N (offset 0) or N^2.
    """
    device = table_b.device
    for name, t in (("table_b", table_b), ("table_d", table_d)):
        check_tensor(name, t, 2, TABLE_DTYPES, device)
    if table_d.shape != table_b.shape or table_d.stride() != table_b.stride() or table_d.dtype != table_b.dtype:
        raise ValueError("table_b and table_d must have the same shape, strides and dtype")
    check_tensor("ids", ids, 1, (torch.int32, torch.int64), device)
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be positive and even, got {head_dim}")
    width = table_b.shape[1]
    for name, col in (("q_col", q_col), ("k_col", k_col)):
        if not 0 <= int(col) <= width - head_dim:
            raise ValueError(f"{name}={col}: columns [{col}, {col + head_dim}) outside table rows of {width}")
    half = head_dim // 2
    for name, t in (("rope_cos", rope_cos), ("rope_sin", rope_sin)):
        check_tensor(name, t, 2, (torch.float32,), device)
        if t.shape[1] != half or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous [positions, {half}], got {tuple(t.shape)}")
    if not 0 <= int(offset) < rope_cos.shape[0]:
        raise ValueError(f"offset {offset} outside [0, {rope_cos.shape[0]}) (the RoPE table's positions)")
    if int(top) <= 0:
        raise ValueError(f"top must be positive, got {top}")
    if int(keys_per_split) <= 0:
        raise ValueError(f"keys_per_split must be positive, got {keys_per_split}")
    if dot_precision not in ("ieee", "tf32", "tf32x3"):
        raise ValueError(f"dot_precision must be ieee, tf32 or tf32x3, got {dot_precision!r}")
    if check_id_range:
        check_ids("ids", ids, table_b.shape[0])

    n = ids.shape[0]
    diag = int(offset) == 0
    k_eff = min(int(top), n if diag else n * n)
    if k_eff == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return PairTopK(torch.empty(0, dtype=torch.float32, device=device), empty, empty)
    ids = ids.contiguous()
    if diag:
        kps, splits = n, 1
    else:  # enough [row, split] entries for the `top`-th of them to exist
        splits = max(triton.cdiv(n, int(keys_per_split)), triton.cdiv(k_eff, n))
        kps = triton.cdiv(n, splits)
        splits = triton.cdiv(n, kps)
    common = dict(ids_ptr=ids, cos_ptr=rope_cos, sin_ptr=rope_sin, tab_b_ptr=table_b, tab_d_ptr=table_d,
                  n_keys=n, keys_per_split=kps, n_splits=splits, q_col=int(q_col), k_col=int(k_col),
                  offset=int(offset), scale=float(head_dim ** -0.5 if scale is None else scale), shift=float(shift),
                  stride_tab=table_b.stride(0), HALF=half, DIAG=diag, DOT_PREC=dot_precision)

    # pass 1: per-(row, split) maxima
    row_max = torch.empty(n, splits, dtype=torch.float32, device=device)
    dummy_i = torch.zeros(1, dtype=torch.int32, device=device)
    _launch(lambda meta: (triton.cdiv(n, meta["BLOCK_Q"]), splits), rows_ptr=ids, max_ptr=row_max,
            cnt_ptr=dummy_i, val_ptr=row_max, qi_ptr=dummy_i, ki_ptr=dummy_i, n_rows=n, thresh=0.0, capacity=0,
            EMIT=False, **common)
    flat = row_max.reshape(-1)
    t = float(torch.topk(flat, k_eff).values[-1]) if flat.numel() >= k_eff else -1.0
    thresh = t * (1.0 - _EMIT_MARGIN) if t > 0 else t  # |v| >= 0 > -1: t = -1 keeps every cell

    # pass 2: rows owning an entry >= thresh, against the splits where they reach it
    rows = torch.nonzero((row_max >= thresh).any(1)).reshape(-1).to(torch.int32)
    capacity = max(4 * k_eff, 1024)
    while True:
        count = torch.zeros(1, dtype=torch.int32, device=device)
        vals = torch.empty(capacity, dtype=torch.float32, device=device)
        q_idx = torch.empty(capacity, dtype=torch.int32, device=device)
        k_idx = torch.empty(capacity, dtype=torch.int32, device=device)
        n_sel = rows.shape[0]
        _launch(lambda meta: (triton.cdiv(n_sel, meta["BLOCK_Q"]), splits), rows_ptr=rows, max_ptr=row_max,
                cnt_ptr=count, val_ptr=vals, qi_ptr=q_idx, ki_ptr=k_idx, n_rows=n_sel, thresh=thresh,
                capacity=capacity, EMIT=True, **common)
        found = int(count)
        if found <= capacity:
            break
        if found > _MAX_SURVIVORS:
            raise RuntimeError(f"pair scan: {found} cells tie at or above the threshold {thresh:g} "
                               f"(more than {_MAX_SURVIVORS}); the pool's values are degenerate")
        capacity = found
    if found < k_eff:
        raise RuntimeError(f"pair scan: pass 2 found {found} cells >= {thresh:g}, pass 1 promised {k_eff} "
                           "(the two passes disagree beyond the margin)")
    vals, q_idx, k_idx = vals[:found], q_idx[:found].long(), k_idx[:found].long()
    order = torch.argsort(k_idx, stable=True)
    order = order[torch.argsort(q_idx[order], stable=True)]
    order = order[torch.argsort(vals[order].abs(), descending=True, stable=True)][:k_eff]
    return PairTopK(vals[order], q_idx[order], k_idx[order])
