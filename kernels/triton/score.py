"""Fused scoring from the token table: gather -> RoPE -> dS -> every docs/metrics.md metric, one pass.

One program scores one (candidate b, scored head h). Its dependent rows t = 0..dep_b-1 sit at
absolute positions p + t; its keys are the template's cached, already rotated prefix keys
(positions 0..p-1) followed by the candidate's own dependent keys (positions p..). For a tile of
rows and a tile of keys it forms, per model,

    S[t, j] = rot_{p+t}(q(tok_t)) . rot_j(k(tok_j)) / sqrt(D)

with the q/k rows gathered from the table by token id and rotated in registers, and reduces
dS = S_dormant - S_base immediately (nothing of S or dS is written to memory):

* head_max / argmax: per-row running max of |dS - baseline[i - j]| over scored cells and its key,
  folded across rows at the end of each row tile. Ties go to the smallest row, then the smallest
  key (the reference's row-major first maximum);
* band: for each of the N_OFFSETS offsets r, the max over scored cells with i - j = r, kept per
  row slot ([rows, offsets]: each offset hits at most one key of a row) and folded once at the
  end (per head; the launcher's caller takes the max over heads);
* head_kl: an online two-softmax computed from dS (docs/precision.md). Per row: the running maxima
  m_d, m_b, the shift c = m_d - m_b, x = dS - c, e_j = e^(S_d - m_d), f(x) = x + expm1(-x) (~x^2/2),
  and l_d = sum e_j, A = sum e_j x_j, F = sum e_j f(x_j) (f a polynomial where |x| < ln2/2, else
  e_j x_j + (e^(S_b - m_b) - e_j)). When the maxima grow, the old cells' weights scale by
  alpha_d = e^(m_d,old - m_d) and their x move by delta = c_new - c_old:
  A <- alpha_d (A - delta l_d), F <- alpha_d (F + f(-delta) l_d + expm1(delta) (F - A)).
  At the end of a row, with m = A / l_d, y = F / l_d - m:
  KL(P_d || P_b) = E_pd[dS] + ln E_pd[e^-dS] = F / l_d + (log1p(y) - y), every term's rounding
  relative to itself (~dS^2), not to S (the textbook form's ~1e-3). One sweep over the keys.

Choices: RoPE is applied on the two halves of a head ([lo | hi], Qwen2's rotate_half split) and
S = lo.lo + hi.hi as two dots, so no lane permutation is needed and any even head_dim works
(halves are padded to >= 16 with masked zeros: every tl.dot tile is >= 16 in each dimension).
cos/sin come from a resident [positions, D/2] table computed by torch exactly as the reference
does, rather than tl.sin/tl.cos, whose GPU versions are approximate at large angles. Dots run in
fp32 with input_precision="ieee" by default (TF32 would cost ~1e-3 relative on dS).
Loops over rows and keys have runtime bounds from each candidate's length, so ragged batches do
no work on padding. Exponentials use exp2/log2 (no libdevice); expm1 and log1p of small arguments
are short polynomials.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import TABLE_DTYPES, Launcher, check_ids, check_tensor, next_pow2


LOG2E = tl.constexpr(1.4426950408889634)
KL_SMALL = tl.constexpr(0.34657359027997264)  # ln2 / 2


@triton.jit
def _expm1_small(x):
    """expm1(x) for |x| <= ln2/2: degree-7 Taylor polynomial (truncation < 3e-8 relative)."""
    p = x * (1.0 / 5040.0) + 1.0 / 720.0
    p = p * x + 1.0 / 120.0
    p = p * x + 1.0 / 24.0
    p = p * x + 1.0 / 6.0
    p = p * x + 0.5
    return (p * x) * x + x


@triton.jit
def _f_small(x):
    """f(x) = x + expm1(-x) = x^2/2 - x^3/6 + ... for |x| <= ln2/2 (degree-8 Taylor polynomial)."""
    p = x * (1.0 / 40320.0) - 1.0 / 5040.0
    p = p * x + 1.0 / 720.0
    p = p * x - 1.0 / 120.0
    p = p * x + 1.0 / 24.0
    p = p * x - 1.0 / 6.0
    p = p * x + 0.5
    return (p * x) * x


@triton.jit
def _log1p_minus(y):
    """log1p(y) - y, y > -1, accurate relative to the result (~ -y^2/2) near 0: with z = y / (2 + y),
    -y z + 2 z^3 (1/3 + z^2/5 + z^4/7 + z^6/9) for |y| < 1/4, log2(1 + y) ln2 - y elsewhere."""
    small = tl.abs(y) < 0.25
    ys = tl.where(small, y, 0.0)
    z = ys / (2.0 + ys)
    z2 = z * z
    ser = (((z2 * (1.0 / 9.0) + 1.0 / 7.0) * z2 + 1.0 / 5.0) * z2 + 1.0 / 3.0) * (2.0 * z * z2) - ys * z
    big = tl.log2(tl.where(small, 2.0, 1.0 + y)) * 0.6931471805599453 - y
    return tl.where(small, ser, big)


@triton.jit
def _rows_rot(tab_b_ptr, tab_d_ptr, stride, tok, col, pos, ok, cos_ptr, sin_ptr,
              HALF: tl.constexpr, HALF_PAD: tl.constexpr):
    """Gather one head's [lo | hi] halves for tokens tok [N] from both models' tables (any table
    dtype, upcast right after the load) and rotate them to absolute positions pos [N]."""
    hd = tl.arange(0, HALF_PAD)
    mask = ok[:, None] & (hd < HALF)[None, :]
    cs = pos.to(tl.int64)[:, None] * HALF + hd[None, :]
    cos = tl.load(cos_ptr + cs, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + cs, mask=mask, other=0.0)
    offs = tok.to(tl.int64)[:, None] * stride + col + hd[None, :]
    lo = tl.load(tab_b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    hi = tl.load(tab_b_ptr + offs + HALF, mask=mask, other=0.0).to(tl.float32)
    b_lo, b_hi = lo * cos - hi * sin, hi * cos + lo * sin
    lo = tl.load(tab_d_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    hi = tl.load(tab_d_ptr + offs + HALF, mask=mask, other=0.0).to(tl.float32)
    return b_lo, b_hi, lo * cos - hi * sin, hi * cos + lo * sin


@triton.jit
def _cached_keys(pk_b_ptr, pk_d_ptr, stride, j, col, ok, HALF: tl.constexpr, HALF_PAD: tl.constexpr):
    """Already rotated fp32 prefix keys of one KV head at positions j [N], both models."""
    hd = tl.arange(0, HALF_PAD)
    mask = ok[:, None] & (hd < HALF)[None, :]
    offs = j.to(tl.int64)[:, None] * stride + col + hd[None, :]
    return (tl.load(pk_b_ptr + offs, mask=mask, other=0.0), tl.load(pk_b_ptr + offs + HALF, mask=mask, other=0.0),
            tl.load(pk_d_ptr + offs, mask=mask, other=0.0), tl.load(pk_d_ptr + offs + HALF, mask=mask, other=0.0))


@triton.jit
def _score_tile(qb_lo, qb_hi, qd_lo, qd_hi, kb_lo, kb_hi, kd_lo, kd_hi, scale,
                t, j0, j_end, p, c, dep, cand_lo, base_row_ptr, offs,
                m_row, j_row, mb, f_kl, md, ld, a_kl, band_row,
                BLOCK_K: tl.constexpr, REGION_ALL: tl.constexpr, HAS_BASELINE: tl.constexpr,
                N_OFFSETS: tl.constexpr, WANT_KL: tl.constexpr, DOT_PREC: tl.constexpr):
    """Logits of one [rows, keys] tile for both models (keys at absolute positions j0.., real below
    j_end), folded at once into the per-row accumulators."""
    s_b = tl.dot(qb_lo, tl.trans(kb_lo), input_precision=DOT_PREC)
    s_b = tl.dot(qb_hi, tl.trans(kb_hi), s_b, input_precision=DOT_PREC) * scale
    s_d = tl.dot(qd_lo, tl.trans(kd_lo), input_precision=DOT_PREC)
    s_d = tl.dot(qd_hi, tl.trans(kd_hi), s_d, input_precision=DOT_PREC) * scale

    j = j0 + tl.arange(0, BLOCK_K)
    t2 = t[:, None]
    j2 = j[None, :]
    valid = (t2 < dep) & (j2 <= p + t2) & (j2 < j_end)  # softmax support: causal, in range
    if REGION_ALL:
        scored = valid
    else:
        scored = valid & ((t2 < c) | ((j2 >= cand_lo) & (j2 < p + c)))
    off = p + t2 - j2
    ds = s_d - s_b
    if HAS_BASELINE:
        ds_b = ds - tl.load(base_row_ptr + off, mask=valid, other=0.0)
    else:
        ds_b = ds
    a = tl.where(scored, tl.abs(ds_b), float("-inf"))

    t_max, t_arg = tl.max(a, 1, return_indices=True, return_indices_tie_break_left=True)
    better = t_max > m_row  # strict: on ties the earlier key (earlier tile) stays
    j_row = tl.where(better, j0 + t_arg, j_row)
    m_row = tl.where(better, t_max, m_row)

    if N_OFFSETS > 0:
        # each band offset hits at most one key per row: [rows, keys, offsets] select, max over keys
        hit = scored[:, :, None] & (off[:, :, None] == offs[None, None, :])
        band_row = tl.maximum(band_row, tl.max(tl.where(hit, a[:, :, None], 0.0), 1))

    if WANT_KL:
        sb = tl.where(valid, s_b, float("-inf"))
        sd = tl.where(valid, s_d, float("-inf"))
        mb_new = tl.maximum(mb, tl.max(sb, 1))
        md_new = tl.maximum(md, tl.max(sd, 1))
        alpha_d = tl.exp2((md - md_new) * LOG2E)
        alpha_b = tl.exp2((mb - mb_new) * LOG2E)
        c_new = md_new - mb_new
        delta = c_new - (md - mb)
        # alpha_d expm1(delta) (= alpha_b - alpha_d) and alpha_d f(-delta): polynomials while delta is small
        small_d = tl.abs(delta) < KL_SMALL
        dsm = tl.where(small_d, delta, 0.0)
        em = tl.where(small_d, alpha_d * _expm1_small(dsm), alpha_b - alpha_d)
        efm = tl.where(small_d, alpha_d * _f_small(-dsm), em - alpha_d * delta)
        x = tl.where(valid, ds - c_new[:, None], 0.0)
        ed = tl.exp2((sd - md_new[:, None]) * LOG2E)
        eb = tl.exp2((sb - mb_new[:, None]) * LOG2E)
        small = tl.abs(x) < KL_SMALL
        term = tl.where(small, ed * _f_small(tl.where(small, x, 0.0)), ed * x + (eb - ed))
        f_kl = alpha_d * f_kl + efm * ld + em * (f_kl - a_kl) + tl.sum(tl.where(valid, term, 0.0), 1)
        a_kl = alpha_d * (a_kl - delta * ld) + tl.sum(tl.where(valid, ed * x, 0.0), 1)
        ld = alpha_d * ld + tl.sum(ed, 1)
        mb = mb_new
        md = md_new
    return m_row, j_row, mb, f_kl, md, ld, a_kl, band_row


@triton.jit
def _prefix_tiles(qb_lo, qb_hi, qd_lo, qd_hi, pk_b_ptr, pk_d_ptr, stride_pk, col, scale, t, p, c, dep, cand_lo,
                  base_row, offs, band_row, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, HALF: tl.constexpr,
                  HALF_PAD: tl.constexpr, REGION_ALL: tl.constexpr, HAS_BASELINE: tl.constexpr,
                  N_OFFSETS: tl.constexpr, WANT_KL: tl.constexpr, DOT_PREC: tl.constexpr):
    """A fresh state for a tile of rows t, folded over the cached prefix keys (already rotated, fp32):
    (m_row, j_row, mb, f_kl, md, ld, a_kl, band_row). Both kernels start every row tile with this; they
    differ only in how the candidate's own keys are made (table gather or projection)."""
    m_row = tl.full((BLOCK_L,), float("-inf"), tl.float32)
    j_row = tl.zeros((BLOCK_L,), dtype=tl.int32)
    mb = tl.full((BLOCK_L,), -1.0e30, tl.float32)
    md = tl.full((BLOCK_L,), -1.0e30, tl.float32)
    f_kl = tl.zeros((BLOCK_L,), dtype=tl.float32)
    ld = tl.zeros((BLOCK_L,), dtype=tl.float32)
    a_kl = tl.zeros((BLOCK_L,), dtype=tl.float32)
    for j0 in range(0, p, BLOCK_K):
        j = j0 + tl.arange(0, BLOCK_K)
        kb_lo, kb_hi, kd_lo, kd_hi = _cached_keys(pk_b_ptr, pk_d_ptr, stride_pk, j, col, j < p, HALF, HALF_PAD)
        m_row, j_row, mb, f_kl, md, ld, a_kl, band_row = _score_tile(
            qb_lo, qb_hi, qd_lo, qd_hi, kb_lo, kb_hi, kd_lo, kd_hi, scale, t, j0, p, p, c, dep, cand_lo,
            base_row, offs, m_row, j_row, mb, f_kl, md, ld, a_kl, band_row,
            BLOCK_K, REGION_ALL, HAS_BASELINE, N_OFFSETS, WANT_KL, DOT_PREC)
    return m_row, j_row, mb, f_kl, md, ld, a_kl, band_row


@triton.jit
def _fold_rows(t0, t, dep, p, m_row, j_row, mb, f_kl, md, ld, a_kl, best, best_i, best_j, kl_acc,
               BLOCK_L: tl.constexpr, WANT_KL: tl.constexpr):
    """End of a row tile: fold per-row max/argmax and row KLs into the per-program results."""
    blk_max, blk_row = tl.max(m_row, 0, return_indices=True, return_indices_tie_break_left=True)
    blk_j = tl.sum(tl.where(tl.arange(0, BLOCK_L) == blk_row, j_row, 0), 0)
    take = blk_max > best  # strict: earlier row tiles win ties
    best_i = tl.where(take, p + t0 + blk_row, best_i)
    best_j = tl.where(take, blk_j, best_j)
    best = tl.where(take, blk_max, best)
    if WANT_KL:
        row_ok = t < dep
        l_d = tl.where(row_ok, ld, 1.0)
        f_m = tl.where(row_ok, f_kl, 0.0) / l_d
        kl_row = f_m + _log1p_minus(f_m - tl.where(row_ok, a_kl, 0.0) / l_d)
        kl_acc += tl.sum(tl.where(row_ok, kl_row, 0.0), 0)
    return best, best_i, best_j, kl_acc


@triton.jit
def _store_results(max_ptr, pos_ptr, kl_ptr, band_ptr, out_idx, best, best_i, best_j, kl_acc, band_row,
                   N_OFFSETS: tl.constexpr, N_OFF_PAD: tl.constexpr):
    tl.store(max_ptr + out_idx, best)
    tl.store(pos_ptr + out_idx * 2, best_i.to(tl.int64))
    tl.store(pos_ptr + out_idx * 2 + 1, best_j.to(tl.int64))
    tl.store(kl_ptr + out_idx, kl_acc)
    if N_OFFSETS > 0:
        rr = tl.arange(0, N_OFF_PAD)
        tl.store(band_ptr + out_idx * N_OFFSETS + rr, tl.max(band_row, 0), mask=rr < N_OFFSETS)


@triton.jit
def _score_kernel(
    ids_ptr, cand_ptr, dep_ptr,
    tab_b_ptr, tab_d_ptr,
    pk_b_ptr, pk_d_ptr,
    heads_ptr, cos_ptr, sin_ptr, base_ptr, offs_ptr,
    max_ptr, pos_ptr, kl_ptr, band_ptr,
    p, cand_lo, n_scored, k_col0, scale,
    stride_ids, stride_tab, stride_pk, stride_base,
    D: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr, GROUP: tl.constexpr,
    REGION_ALL: tl.constexpr, HAS_BASELINE: tl.constexpr, N_OFFSETS: tl.constexpr,
    N_OFF_PAD: tl.constexpr, WANT_KL: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    hs = tl.program_id(1)
    h = tl.load(heads_ptr + hs)
    g = h // GROUP
    c = tl.load(cand_ptr + b).to(tl.int32)  # int32 throughout: loop-carried positions keep one type
    dep = tl.load(dep_ptr + b).to(tl.int32)
    q_col = h * D
    k_col = k_col0 + g * D
    row_ids = ids_ptr + b * stride_ids
    base_row = base_ptr + hs * stride_base
    rr = tl.arange(0, N_OFF_PAD)
    offs = tl.load(offs_ptr + rr, mask=rr < N_OFFSETS, other=-1)  # -1 never matches a causal offset

    best = float("-inf")
    best_i = p
    best_j = 0
    kl_acc = 0.0
    band_row = tl.zeros((BLOCK_L, N_OFF_PAD), dtype=tl.float32)  # per row slot; max over slots at the end
    for t0 in range(0, dep, BLOCK_L):
        t = t0 + tl.arange(0, BLOCK_L)
        t_ok = t < dep
        tok = tl.load(row_ids + t, mask=t_ok, other=0)
        qb_lo, qb_hi, qd_lo, qd_hi = _rows_rot(tab_b_ptr, tab_d_ptr, stride_tab, tok, q_col, p + t, t_ok,
                                               cos_ptr, sin_ptr, HALF, HALF_PAD)
        m_row, j_row, mb, f_kl, md, ld, a_kl, band_row = _prefix_tiles(
            qb_lo, qb_hi, qd_lo, qd_hi, pk_b_ptr, pk_d_ptr, stride_pk, g * D, scale, t, p, c, dep, cand_lo,
            base_row, offs, band_row, BLOCK_L, BLOCK_K, HALF, HALF_PAD, REGION_ALL, HAS_BASELINE, N_OFFSETS, WANT_KL,
            DOT_PREC)

        # the candidate's own keys, gathered from the table and rotated here (causal: up to this tile)
        for m0 in range(0, tl.minimum(t0 + BLOCK_L, dep), BLOCK_K):
            m = m0 + tl.arange(0, BLOCK_K)
            m_ok = m < dep
            ktok = tl.load(row_ids + m, mask=m_ok, other=0)
            kb_lo, kb_hi, kd_lo, kd_hi = _rows_rot(tab_b_ptr, tab_d_ptr, stride_tab, ktok, k_col, p + m, m_ok,
                                                   cos_ptr, sin_ptr, HALF, HALF_PAD)
            m_row, j_row, mb, f_kl, md, ld, a_kl, band_row = _score_tile(
                qb_lo, qb_hi, qd_lo, qd_hi, kb_lo, kb_hi, kd_lo, kd_hi, scale, t, p + m0, p + dep, p, c, dep,
                cand_lo, base_row, offs, m_row, j_row, mb, f_kl, md, ld, a_kl, band_row,
                BLOCK_K, REGION_ALL, HAS_BASELINE, N_OFFSETS, WANT_KL, DOT_PREC)

        best, best_i, best_j, kl_acc = _fold_rows(t0, t, dep, p, m_row, j_row, mb, f_kl, md, ld, a_kl,
                                                  best, best_i, best_j, kl_acc, BLOCK_L, WANT_KL)

    _store_results(max_ptr, pos_ptr, kl_ptr, band_ptr, b * n_scored + hs, best, best_i, best_j, kl_acc, band_row,
                   N_OFFSETS, N_OFF_PAD)


def _gpu_configs():
    # H100 (sm_90), checked with aot_check.py for D = 128: with fp32 IEEE dots (FMA units) the
    # operands of a [16, 64] x [64, 32..64] tile for both models fit in 156-185 registers at 8 warps;
    # software pipelining (num_stages >= 2) or 4 warps spills, so neither is offered. The row tile
    # (16..64, from the batch width) is a launcher decision and part of the autotune key; for each
    # row tile only the key tiles that compiled without spills are kept (_SPILL_FREE_KEY_TILES).
    return [triton.Config({"BLOCK_K": 32}, num_warps=8, num_stages=1),
            triton.Config({"BLOCK_K": 64}, num_warps=8, num_stages=1)]


# row tile -> key tiles that compile without register spills on sm_90 (aot_check.py, D = 128)
_SPILL_FREE_KEY_TILES = {16: (32, 64), 32: (64,), 64: (32,)}


def _prune(configs, meta):
    allowed = _SPILL_FREE_KEY_TILES.get(meta.get("BLOCK_L", 16), (32,))
    return [c for c in configs if c.kwargs["BLOCK_K"] in allowed]


_launch = Launcher(_score_kernel, _gpu_configs(),
                   interp_config=triton.Config({"BLOCK_K": 64}, num_warps=4, num_stages=1),
                   key=["D", "GROUP", "BLOCK_L", "REGION_ALL", "HAS_BASELINE", "N_OFFSETS", "WANT_KL"], prune=_prune)


def row_block(width: int) -> int:
    """Rows per tile: the batch width rounded up to a power of two, between 16 and 64."""
    return min(64, max(16, next_pow2(width)))


class Metrics:
    """Raw per-(candidate, head) outputs: head_max [B, Hs], head_pos [B, Hs, 2] int64, head_kl
    [B, Hs], band [B, Hs, n_offsets] (per head; max over heads is the band metric)."""

    def __init__(self, head_max, head_pos, head_kl, band):
        self.head_max, self.head_pos, self.head_kl, self.band = head_max, head_pos, head_kl, band


def check_rows(ids, cand_len, dep_len, device, vocab, check_id_range):
    check_tensor("ids", ids, 2, (torch.int32, torch.int64), device)
    bsz = ids.shape[0]
    for name, t in (("cand_len", cand_len), ("dep_len", dep_len)):
        check_tensor(name, t, 1, (torch.int32, torch.int64), device)
        if t.shape[0] != bsz:
            raise ValueError(f"{name} must have {bsz} entries, got {t.shape[0]}")
    if check_id_range:
        check_ids("ids", ids, vocab)
        if bsz:
            cl, dl = cand_len.cpu(), dep_len.cpu()
            if int(cl.min()) < 1 or bool((dl < cl).any()) or int(dl.max()) > ids.shape[1]:
                raise ValueError("need 1 <= cand_len <= dep_len <= ids.shape[1] for every candidate")


def check_common(prefix_keys, heads, rope_cos, rope_sin, baseline, offsets, device, n_heads, n_kv, head_dim):
    if head_dim % 2 or n_heads % n_kv:
        raise ValueError(f"need even head_dim and H divisible by KV, got D={head_dim}, H={n_heads}, KV={n_kv}")
    pk_b, pk_d = prefix_keys
    for name, t in (("prefix_keys[0]", pk_b), ("prefix_keys[1]", pk_d)):
        check_tensor(name, t, 3, (torch.float32,), device)
        if t.shape[1:] != (n_kv, head_dim) or t.shape[0] != pk_b.shape[0]:
            raise ValueError(f"{name} must be [p, {n_kv}, {head_dim}], got {tuple(t.shape)}")
        if t.numel() and (t.stride(1) != head_dim or t.stride(0) != pk_b.stride(0)):
            raise ValueError(f"{name} must be contiguous in its last two dimensions, strides equal to prefix_keys[0]")
    p = pk_b.shape[0]
    check_tensor("heads", heads, 1, (torch.int32,), device)
    half = head_dim // 2
    for name, t in (("rope_cos", rope_cos), ("rope_sin", rope_sin)):
        check_tensor(name, t, 2, (torch.float32,), device)
        if t.shape[1] != half or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous [positions, {half}], got {tuple(t.shape)}")
    if baseline is not None:
        check_tensor("baseline", baseline, 2, (torch.float32,), device)
        if baseline.shape[0] != heads.shape[0]:
            raise ValueError(f"baseline must have one row per scored head ({heads.shape[0]}), got {baseline.shape[0]}")
    check_tensor("offsets", offsets, 1, (torch.int32, torch.int64), device)
    return p


def score_table(table_b: torch.Tensor, table_d: torch.Tensor, ids: torch.Tensor, cand_len: torch.Tensor,
                dep_len: torch.Tensor, prefix_keys, heads: torch.Tensor, rope_cos: torch.Tensor,
                rope_sin: torch.Tensor, baseline: torch.Tensor | None, offsets: torch.Tensor, *, n_heads: int,
                n_kv_heads: int, head_dim: int, region: str = "candidate", want_kl: bool = True,
                max_width: int | None = None, dot_precision: str = "ieee", check_id_range: bool = True,
                cand_start: int | None = None) -> Metrics:
    """Score dependent rows against cached prefix keys, reading q/k from token tables.

    table_b/table_d [V, (H + KV) * D] fp32 or bf16 (rows may be strided, columns contiguous);
    ids [B, W] int32/int64 dependent-row token ids; cand_len/dep_len [B]; prefix_keys: rotated
    fp32 [p, KV, D] per model; heads [Hs] int32 absolute head ids; rope_cos/rope_sin [P, D/2]
    with P > p + W - 1 positions; baseline [Hs, P] fp32 or None; offsets [n] band offsets.
    `max_width` (host int, default ids.shape[1]) picks the row tile without reading device memory.
    cand_start (default p): absolute position where the candidate begins; below p when the first
    candidate tokens are inside the cached prefix (incremental extension), so that region
    "candidate" also scores suffix rows against those cached candidate keys.
    """
    device = table_b.device
    for name, t in (("table_b", table_b), ("table_d", table_d)):
        check_tensor(name, t, 2, TABLE_DTYPES, device)
        if t.shape != table_b.shape or t.stride() != table_b.stride() or t.dtype != table_b.dtype:
            raise ValueError("table_b and table_d must have the same shape, strides and dtype")
    if table_b.shape[1] != (n_heads + n_kv_heads) * head_dim:
        raise ValueError(f"table rows must hold (H + KV) * D = {(n_heads + n_kv_heads) * head_dim} values, "
                         f"got {table_b.shape[1]}")
    check_rows(ids, cand_len, dep_len, device, table_b.shape[0], check_id_range)
    p = check_common(prefix_keys, heads, rope_cos, rope_sin, baseline, offsets, device, n_heads, n_kv_heads,
                     head_dim)
    return _run(_launch, dict(tab_b_ptr=table_b, tab_d_ptr=table_d, stride_tab=table_b.stride(0)), ids, cand_len,
                dep_len, prefix_keys, p, heads, rope_cos, rope_sin, baseline, offsets, n_heads, n_kv_heads, head_dim,
                region, want_kl, max_width, dot_precision, cand_start)


def _run(launch, model_kwargs, ids, cand_len, dep_len, prefix_keys, p, heads, rope_cos, rope_sin, baseline, offsets,
         n_heads, n_kv_heads, head_dim, region, want_kl, max_width, dot_precision, cand_start):
    """Shared tail of the table and direct launchers: outputs, grid and constexpr flags."""
    if region not in ("candidate", "all"):
        raise ValueError(f"region must be 'candidate' or 'all', got {region!r}")
    if dot_precision not in ("ieee", "tf32", "tf32x3"):
        raise ValueError(f"dot_precision must be ieee, tf32 or tf32x3, got {dot_precision!r}")
    cand_start = p if cand_start is None else int(cand_start)
    if not 0 <= cand_start <= p:
        raise ValueError(f"cand_start must be in [0, p={p}], got {cand_start}")
    device = ids.device
    bsz, width = ids.shape
    width = width if max_width is None else int(max_width)
    n_scored, n_off = heads.shape[0], offsets.shape[0]
    if p + width > rope_cos.shape[0]:
        raise ValueError(f"positions up to {p + width - 1} exceed the RoPE table ({rope_cos.shape[0]} positions)")
    if baseline is not None and baseline.shape[1] < p + width:
        raise ValueError(f"baseline covers offsets < {baseline.shape[1]}, need {p + width}")
    head_max = torch.empty(bsz, n_scored, dtype=torch.float32, device=device)
    head_pos = torch.empty(bsz, n_scored, 2, dtype=torch.int64, device=device)
    head_kl = torch.zeros(bsz, n_scored, dtype=torch.float32, device=device)
    band = torch.zeros(bsz, n_scored, n_off, dtype=torch.float32, device=device)
    if bsz == 0:
        return Metrics(head_max, head_pos, head_kl, band)
    pk_b, pk_d = prefix_keys
    if p == 0:  # never dereferenced (the prefix loop has no iterations); any valid pointer will do
        pk_b = pk_d = rope_cos
    half = head_dim // 2
    base = baseline if baseline is not None else rope_cos
    launch((bsz, n_scored),
           ids_ptr=ids, cand_ptr=cand_len, dep_ptr=dep_len, pk_b_ptr=pk_b, pk_d_ptr=pk_d, heads_ptr=heads,
           cos_ptr=rope_cos, sin_ptr=rope_sin, base_ptr=base, offs_ptr=offsets if n_off else heads,
           max_ptr=head_max, pos_ptr=head_pos, kl_ptr=head_kl, band_ptr=band,
           p=p, cand_lo=cand_start, n_scored=n_scored, k_col0=n_heads * head_dim, scale=head_dim ** -0.5,
           stride_ids=ids.stride(0), stride_pk=pk_b.stride(0) if p else 0, stride_base=base.stride(0),
           D=head_dim, HALF=half, HALF_PAD=max(16, next_pow2(half)), GROUP=n_heads // n_kv_heads,
           REGION_ALL=region == "all", HAS_BASELINE=baseline is not None, N_OFFSETS=n_off,
           N_OFF_PAD=next_pow2(max(1, n_off)), WANT_KL=want_kl, DOT_PREC=dot_precision,
           BLOCK_L=row_block(width), **model_kwargs)
    return Metrics(head_max, head_pos, head_kl, band)
