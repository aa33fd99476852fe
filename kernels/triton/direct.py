"""The direct path, fused: embedding gather -> RMSNorm -> Q/K projection -> RoPE -> dS reduction.

Same program layout, masks and reductions as score.py (one program per (candidate, scored head);
its helpers are shared), but the q/k rows of the dependent tokens are computed from the checkpoint
tensors instead of read from a token table, for when a table does not fit on the device:

    q_lo/q_hi(t) = rsqrt(mean(x_t^2) + eps) * ((w * x_t) @ Wq[hD .. hD+D/2 | hD+D/2 .. hD+D]^T) + bq
    (k likewise from the KV head's rows of Wk), then half-split RoPE at absolute positions.

Each head's projection is computed as its two halves (two accumulators of [rows, D/2], padded to
>= 16 columns), which is exactly what the half-split rotation needs: no lane shuffles and no
duplicated projection. The RMS scale is applied to the accumulators (it commutes with the
projection), so one sweep over the hidden dimension yields both the dot products and the sum of
squares. Only the scored heads' rows of W are read; W (bf16/fp16/fp32) is upcast after each load
and accumulated in fp32. Prefix keys still come from the template cache (computed once).
Cost: every program re-projects its rows for its head (and its KV head, shared by GQA groups), so
this path is compute-bound (see README.md ("GPU performance (estimated)")); the table path is the fast one.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import FLOAT_DTYPES, Launcher, check_tensor
from .score import _fold_rows, _prefix_tiles, _run, _score_tile, _store_results, check_common, check_rows


@triton.jit
def _project_rot(emb_ptr, norm_ptr, w_ptr, bias_ptr, stride_e, stride_w, tok, ok, w_row0, pos, cos_ptr, sin_ptr,
                 hidden, eps, N: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr, BLOCK_H: tl.constexpr,
                 DOT_PREC: tl.constexpr):
    """Rotated [lo | hi] halves [N, HALF_PAD] of one head (weight rows w_row0 .. w_row0 + D) of one
    model, for tokens tok [N] at positions pos [N], projected from the embeddings in one sweep."""
    hd = tl.arange(0, HALF_PAD)
    h_ok = hd < HALF
    rows = tok.to(tl.int64)[:, None] * stride_e
    w_lo = (w_row0 + hd).to(tl.int64)[:, None] * stride_w
    acc_lo = tl.zeros((N, HALF_PAD), dtype=tl.float32)
    acc_hi = tl.zeros((N, HALF_PAD), dtype=tl.float32)
    ssq = tl.zeros((N,), dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < hidden
        wm = h_ok[:, None] & k_ok[None, :]
        x = tl.load(emb_ptr + rows + ks[None, :], mask=ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        ssq += tl.sum(x * x, 1)
        x = x * tl.load(norm_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        w = tl.load(w_ptr + w_lo + ks[None, :], mask=wm, other=0.0).to(tl.float32)
        acc_lo = tl.dot(x, tl.trans(w), acc_lo, input_precision=DOT_PREC)
        w = tl.load(w_ptr + w_lo + HALF * stride_w + ks[None, :], mask=wm, other=0.0).to(tl.float32)
        acc_hi = tl.dot(x, tl.trans(w), acc_hi, input_precision=DOT_PREC)
    rstd = tl.rsqrt(ssq / hidden + eps)[:, None]
    lo = acc_lo * rstd + tl.load(bias_ptr + w_row0 + hd, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    hi = acc_hi * rstd + tl.load(bias_ptr + w_row0 + HALF + hd, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    mask = ok[:, None] & h_ok[None, :]
    cs = pos.to(tl.int64)[:, None] * HALF + hd[None, :]
    cos = tl.load(cos_ptr + cs, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + cs, mask=mask, other=0.0)
    # cos = sin = 0 on masked rows/columns, so padding comes out as exact zeros
    return lo * cos - hi * sin, hi * cos + lo * sin


@triton.jit
def _direct_kernel(
    ids_ptr, cand_ptr, dep_ptr,
    emb_b_ptr, emb_d_ptr, norm_b_ptr, norm_d_ptr, w_b_ptr, w_d_ptr, bias_b_ptr, bias_d_ptr,
    pk_b_ptr, pk_d_ptr,
    heads_ptr, cos_ptr, sin_ptr, base_ptr, offs_ptr,
    max_ptr, pos_ptr, kl_ptr, band_ptr,
    p, cand_lo, n_scored, k_col0, scale, hidden, eps,
    stride_ids, stride_e, stride_w, stride_pk, stride_base,
    D: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr, GROUP: tl.constexpr,
    REGION_ALL: tl.constexpr, HAS_BASELINE: tl.constexpr, N_OFFSETS: tl.constexpr,
    N_OFF_PAD: tl.constexpr, WANT_KL: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    hs = tl.program_id(1)
    h = tl.load(heads_ptr + hs)
    g = h // GROUP
    c = tl.load(cand_ptr + b).to(tl.int32)  # int32 throughout: loop-carried positions keep one type
    dep = tl.load(dep_ptr + b).to(tl.int32)
    q_row0 = h * D
    k_row0 = k_col0 + g * D
    row_ids = ids_ptr + b * stride_ids
    base_row = base_ptr + hs * stride_base
    rr = tl.arange(0, N_OFF_PAD)
    offs = tl.load(offs_ptr + rr, mask=rr < N_OFFSETS, other=-1)

    best = float("-inf")
    best_i = p
    best_j = 0
    kl_acc = 0.0
    band_row = tl.zeros((BLOCK_L, N_OFF_PAD), dtype=tl.float32)
    for t0 in range(0, dep, BLOCK_L):
        t = t0 + tl.arange(0, BLOCK_L)
        t_ok = t < dep
        tok = tl.load(row_ids + t, mask=t_ok, other=0)
        qb_lo, qb_hi = _project_rot(emb_b_ptr, norm_b_ptr, w_b_ptr, bias_b_ptr, stride_e, stride_w, tok, t_ok,
                                    q_row0, p + t, cos_ptr, sin_ptr, hidden, eps, BLOCK_L, HALF, HALF_PAD, BLOCK_H,
                                    DOT_PREC)
        qd_lo, qd_hi = _project_rot(emb_d_ptr, norm_d_ptr, w_d_ptr, bias_d_ptr, stride_e, stride_w, tok, t_ok,
                                    q_row0, p + t, cos_ptr, sin_ptr, hidden, eps, BLOCK_L, HALF, HALF_PAD, BLOCK_H,
                                    DOT_PREC)
        m_row, j_row, mb, f_kl, md, ld, a_kl, band_row = _prefix_tiles(
            qb_lo, qb_hi, qd_lo, qd_hi, pk_b_ptr, pk_d_ptr, stride_pk, g * D, scale, t, p, c, dep, cand_lo,
            base_row, offs, band_row, BLOCK_L, BLOCK_K, HALF, HALF_PAD, REGION_ALL, HAS_BASELINE, N_OFFSETS, WANT_KL,
            DOT_PREC)

        for m0 in range(0, tl.minimum(t0 + BLOCK_L, dep), BLOCK_K):
            m = m0 + tl.arange(0, BLOCK_K)
            m_ok = m < dep
            ktok = tl.load(row_ids + m, mask=m_ok, other=0)
            kb_lo, kb_hi = _project_rot(emb_b_ptr, norm_b_ptr, w_b_ptr, bias_b_ptr, stride_e, stride_w, ktok, m_ok,
                                        k_row0, p + m, cos_ptr, sin_ptr, hidden, eps, BLOCK_K, HALF, HALF_PAD, BLOCK_H,
                                        DOT_PREC)
            kd_lo, kd_hi = _project_rot(emb_d_ptr, norm_d_ptr, w_d_ptr, bias_d_ptr, stride_e, stride_w, ktok, m_ok,
                                        k_row0, p + m, cos_ptr, sin_ptr, hidden, eps, BLOCK_K, HALF, HALF_PAD, BLOCK_H,
                                        DOT_PREC)
            m_row, j_row, mb, f_kl, md, ld, a_kl, band_row = _score_tile(
                qb_lo, qb_hi, qd_lo, qd_hi, kb_lo, kb_hi, kd_lo, kd_hi, scale, t, p + m0, p + dep, p, c, dep,
                cand_lo, base_row, offs, m_row, j_row, mb, f_kl, md, ld, a_kl, band_row,
                BLOCK_K, REGION_ALL, HAS_BASELINE, N_OFFSETS, WANT_KL, DOT_PREC)

        best, best_i, best_j, kl_acc = _fold_rows(t0, t, dep, p, m_row, j_row, mb, f_kl, md, ld, a_kl,
                                                  best, best_i, best_j, kl_acc, BLOCK_L, WANT_KL)

    _store_results(max_ptr, pos_ptr, kl_ptr, band_ptr, b * n_scored + hs, best, best_i, best_j, kl_acc, band_row,
                   N_OFFSETS, N_OFF_PAD)


# H100 (sm_90), checked with aot_check.py for Qwen2-7B shapes: the fp32 IEEE projection runs on FMA
# units, whose dot operands live in registers, so the hidden slice is kept at 16 (32 spills) and
# 8 warps are used (212-216 registers, no spills; 4 warps spill).
_launch = Launcher(
    _direct_kernel,
    gpu_configs=[triton.Config({"BLOCK_K": 16, "BLOCK_H": 16}, num_warps=8, num_stages=1),
                 triton.Config({"BLOCK_K": 16, "BLOCK_H": 16}, num_warps=8, num_stages=2)],
    interp_config=triton.Config({"BLOCK_K": 32, "BLOCK_H": 64}, num_warps=4, num_stages=1),
    key=["D", "GROUP", "BLOCK_L", "hidden", "REGION_ALL", "HAS_BASELINE", "N_OFFSETS", "WANT_KL"],
)


def score_direct(weights_b, weights_d, eps: float, ids: torch.Tensor, cand_len: torch.Tensor,
                 dep_len: torch.Tensor, prefix_keys, heads: torch.Tensor, rope_cos: torch.Tensor,
                 rope_sin: torch.Tensor, baseline: torch.Tensor | None, offsets: torch.Tensor, *, n_heads: int,
                 n_kv_heads: int, head_dim: int, region: str = "candidate", want_kl: bool = True,
                 max_width: int | None = None, dot_precision: str = "ieee", check_id_range: bool = True,
                 cand_start: int | None = None):
    """Like score.score_table, with q/k projected on the fly.

    weights_b / weights_d: (embed [V, hidden], norm [hidden], w [(H + KV) * D, hidden] = cat(Wq, Wk),
    bias [(H + KV) * D]) of each model, on one device, same shapes and strides (bf16/fp16/fp32).
    """
    embed = weights_b[0]
    check_tensor("embed", embed, 2, FLOAT_DTYPES)
    device = embed.device
    vocab, hidden = embed.shape
    n_out = (n_heads + n_kv_heads) * head_dim
    names = ("embed", "norm", "w", "bias")
    shapes = ((vocab, hidden), (hidden,), (n_out, hidden), (n_out,))
    for which, tensors in (("base", weights_b), ("dormant", weights_d)):
        if len(tensors) != 4:
            raise ValueError(f"{which} weights must be (embed, norm, w, bias)")
        for name, t, shape, ref in zip(names, tensors, shapes, weights_b):
            check_tensor(f"{which} {name}", t, len(shape), FLOAT_DTYPES, device)
            if tuple(t.shape) != shape or t.stride() != ref.stride():
                raise ValueError(f"{which} {name} must have shape {shape} and the base model's strides, "
                                 f"got {tuple(t.shape)}")
    check_rows(ids, cand_len, dep_len, device, vocab, check_id_range)
    p = check_common(prefix_keys, heads, rope_cos, rope_sin, baseline, offsets, device, n_heads, n_kv_heads,
                     head_dim)
    model = dict(emb_b_ptr=weights_b[0], emb_d_ptr=weights_d[0], norm_b_ptr=weights_b[1], norm_d_ptr=weights_d[1],
                 w_b_ptr=weights_b[2], w_d_ptr=weights_d[2], bias_b_ptr=weights_b[3], bias_d_ptr=weights_d[3],
                 hidden=hidden, eps=float(eps), stride_e=embed.stride(0), stride_w=weights_b[2].stride(0))
    return _run(_launch, model, ids, cand_len, dep_len, prefix_keys, p, heads, rope_cos, rope_sin, baseline, offsets,
                n_heads, n_kv_heads, head_dim, region, want_kl, max_width, dot_precision, cand_start)
