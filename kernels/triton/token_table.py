"""Fused RMSNorm + Q/K projection: the token table (docs/architecture.md#the-layer-0-score-exactly).

For token ids v_0..v_{n-1} of one model:

    x      = E[v]                                  (gathered embedding row, any float dtype)
    out[r] = rsqrt(mean(x^2) + eps) * ((w * x) @ W^T) + b      W = [Wq; Wk], b = [bq; bk]

which equals W (w * x * rsqrt(mean(x^2) + eps)) + b: the per-row RMS scale commutes with the
projection, so it is applied once to the fp32 accumulator and the sum of squares is gathered in the
same sweep over the hidden dimension as the dot products (one pass over x, no normalised copy).
Weights of any of bf16/fp16/fp32 are upcast to fp32 right after each load (the interpreter holds
bf16 as raw bits) and accumulated in fp32 with IEEE dots. The output row is [(H + KV) * D] (q heads
then k heads, pre-RoPE), stored as fp32 or as bf16 with explicit round-to-nearest-even (done on the
bits, so the interpreter, which truncates on fp32->bf16 casts, and a GPU produce the same table).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import FLOAT_DTYPES, TABLE_DTYPES, Launcher, check_ids, check_tensor


@triton.jit
def _round_bf16_bits(x):
    """fp32 -> bf16 bit pattern (int16) with round-to-nearest-even. Inputs are finite."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def _token_table_kernel(
    ids_ptr, embed_ptr, norm_ptr, w_ptr, b_ptr, out_ptr,
    n_rows, n_out, hidden, eps,
    stride_e, stride_w, stride_o,
    HAS_IDS: tl.constexpr, OUT_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_out
    if HAS_IDS:
        tok = tl.load(ids_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    else:
        tok = rows.to(tl.int64)
    x_rows = embed_ptr + tok[:, None] * stride_e
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ssq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < hidden
        x = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        g = tl.load(norm_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
        w = tl.load(w_rows + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        ssq += tl.sum(x * x, 1)
        acc = tl.dot(x * g[None, :], tl.trans(w), acc, input_precision="ieee")

    rstd = tl.rsqrt(ssq / hidden + eps)
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    out = acc * rstd[:, None] + bias[None, :]
    o_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_o + cols[None, :]
    o_mask = row_ok[:, None] & col_ok[None, :]
    if OUT_BF16:
        tl.store(o_ptrs, _round_bf16_bits(out), mask=o_mask)
    else:
        tl.store(o_ptrs, out, mask=o_mask)


# H100 (sm_90): a plain fp32 IEEE GEMM on FMA units (one-time build, ~9 TFLOP for both Qwen2-7B
# tables); all four tiles compile without spills (aot_check.py, 208-254 registers).
_launch = Launcher(
    _token_table_kernel,
    gpu_configs=[
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    ],
    interp_config=triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=1),
    key=["n_out", "hidden", "HAS_IDS", "OUT_BF16"],
)


def token_table(embed: torch.Tensor, norm: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float,
                ids: torch.Tensor | None = None, out: torch.Tensor | None = None,
                out_dtype: torch.dtype = torch.float32, check_id_range: bool = True) -> torch.Tensor:
    """Pre-RoPE [q | k] rows of one model for `ids` (default: every embedding row).

    embed [V, hidden], norm [hidden], w [N, hidden] (= cat(Wq, Wk)), b [N]: one model's Layer-0
    tensors on one device (bf16/fp16/fp32). Returns out [n, N]; `out` may be a preallocated fp32 or
    bf16 view whose rows are strided (e.g. one model's half of an interleaved two-model table).
    """
    check_tensor("embed", embed, 2, FLOAT_DTYPES)
    device = embed.device
    vocab, hidden = embed.shape
    check_tensor("norm", norm, 1, FLOAT_DTYPES, device)
    check_tensor("w", w, 2, FLOAT_DTYPES, device)
    check_tensor("b", b, 1, FLOAT_DTYPES, device)
    n_out = w.shape[0]
    if norm.shape[0] != hidden or w.shape[1] != hidden or b.shape[0] != n_out:
        raise ValueError(f"shape mismatch: embed {tuple(embed.shape)}, norm {tuple(norm.shape)}, "
                         f"w {tuple(w.shape)}, b {tuple(b.shape)}")
    if ids is not None:
        check_tensor("ids", ids, 1, (torch.int32, torch.int64), device)
        if check_id_range:
            check_ids("ids", ids, vocab)
        ids = ids.contiguous()
    n_rows = vocab if ids is None else ids.shape[0]
    if out is None:
        if out_dtype not in TABLE_DTYPES:
            raise TypeError(f"table dtype must be float32 or bfloat16, got {out_dtype}")
        out = torch.empty(n_rows, n_out, dtype=out_dtype, device=device)
    check_tensor("out", out, 2, TABLE_DTYPES, device)
    if tuple(out.shape) != (n_rows, n_out):
        raise ValueError(f"out must have shape {(n_rows, n_out)}, got {tuple(out.shape)}")
    if n_rows == 0:
        return out
    out_bf16 = out.dtype == torch.bfloat16
    target = out.view(torch.int16) if out_bf16 else out
    grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_M"]), triton.cdiv(n_out, meta["BLOCK_N"]))
    _launch(grid, ids if ids is not None else out, embed, norm, w, b, target,
            n_rows, n_out, hidden, float(eps), embed.stride(0), w.stride(0), out.stride(0),
            HAS_IDS=ids is not None, OUT_BF16=out_bf16)
    return out
