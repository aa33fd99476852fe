"""The torch reference: Layer-0 math of docs/architecture.md#the-layer-0-score-exactly and metric reductions of docs/metrics.md.

Everything here is float32 and device-agnostic; every other backend (native C++, Triton) is tested
against these functions and the benchmarks import them. Layout conventions shared by all backends:

* A batch is scored as its *dependent rows*: for candidate b of length c_b, rows t = 0..c_b+s-1 are
  the candidate followed by the template suffix (s tokens), at absolute positions p + t (p = prefix
  length). Rows before the candidate never change and are summarised once per template (context.py).
* Keys are indexed by absolute position: 0..p-1 are the cached prefix keys, p+m the dependent keys.
  The relative offset of cell (row t, key j) is therefore p + t - j.
* Scored heads are a list of absolute head ids; query head h reads KV head h // (H/KV).
"""
from __future__ import annotations

import math

import torch

from .checkpoint import Layer0Weights
from .types import RowStats

REGIONS = ("candidate", "all")
BASELINES = ("none", "bias")


def rms_norm(weights: Layer0Weights, x: torch.Tensor) -> torch.Tensor:
    """Qwen2 input_layernorm in float32: w * (x * rsqrt(mean(x^2) + eps))."""
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + weights.config.rms_norm_eps)
    return weights.norm.to(x.device, torch.float32) * x


def project(weights: Layer0Weights, ids: torch.Tensor, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-RoPE q [..., H, D] and k [..., KV, D] of token ids: embedding gather -> RMSNorm -> Q/K."""
    cfg = weights.config
    device = ids.device if device is None else device
    x = weights.embed[ids.reshape(-1).cpu()].to(device)
    n = rms_norm(weights, x)
    q = torch.addmm(weights.bq.to(device, torch.float32), n, weights.wq.to(device, torch.float32).T)
    k = torch.addmm(weights.bk.to(device, torch.float32), n, weights.wk.to(device, torch.float32).T)
    shape = tuple(ids.shape)
    return (
        q.reshape(*shape, cfg.num_heads, cfg.head_dim),
        k.reshape(*shape, cfg.num_kv_heads, cfg.head_dim),
    )


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [len(positions), D/2] exactly as transformers computes them (float32 throughout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    ang = positions.float()[:, None] * inv_freq[None, :]
    return ang.cos(), ang.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split RoPE on the last dim; cos/sin broadcast against x[..., :D/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def bias_baseline(
    base: Layer0Weights, dormant: Layer0Weights, heads: torch.Tensor, n_offsets: int, device=None
) -> torch.Tensor:
    """Content-free part of dS: [len(heads), n_offsets], entry r = dS of the q/k biases at offset r.

    By RoPE's relative property the bias-only logit depends only on i - j = r, so it is computed with
    the query at position r and the key at position 0.
    """
    cfg = base.config
    device = heads.device if device is None else device
    cos, sin = rope_angles(torch.arange(n_offsets, device=device), cfg.head_dim, cfg.rope_theta)
    out = torch.zeros(len(heads), n_offsets, device=device)
    for sign, w in ((-1.0, base), (1.0, dormant)):
        bq = w.bq.to(device, torch.float32).reshape(cfg.num_heads, cfg.head_dim)[heads]
        bk = w.bk.to(device, torch.float32).reshape(cfg.num_kv_heads, cfg.head_dim)[heads // cfg.group]
        q_rot = rotate(bq[:, None, :], cos[None], sin[None])  # [Hs, R, D]
        out += sign * (q_rot * bk[:, None, :]).sum(-1)
    return out / math.sqrt(cfg.head_dim)


def attention_logits(q_rot: torch.Tensor, keys: torch.Tensor, head_dim: int) -> torch.Tensor:
    """S [B, Hs, L, K] from rotated queries [B, L, Hs, D] and rotated keys [B, K, Hs, D]."""
    return torch.einsum("blhd,bkhd->bhlk", q_rot, keys) / math.sqrt(head_dim)


KL_SMALL = math.log(2.0) / 2  # |x| below which a cell's f(x) is a polynomial (else a difference of weights)


def kl_f_small(x: torch.Tensor) -> torch.Tensor:
    """f(x) = x + expm1(-x) = x^2/2 - x^3/6 + ... for |x| <= ln2/2 (degree-8 Taylor polynomial)."""
    p = x * (1 / 40320) - 1 / 5040
    for c in (1 / 720, -1 / 120, 1 / 24, -1 / 6, 1 / 2):
        p = p * x + c
    return p * x * x


def row_kl(s_base: torch.Tensor, s_dorm: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """KL(softmax(s_dorm) || softmax(s_base)) over the last axis, restricted to cells where valid
    (rows without a valid cell give 0), computed from dS so that its rounding error scales with the
    KL itself, not with S (docs/precision.md). With c = max S_d - max S_b, x = dS - c,
    e_j = exp(S_d,j - max S_d), f(x) = x + expm1(-x) (>= 0, ~x^2/2):

        KL = E_pd[dS] + log E_pd[exp(-dS)] = F + (log1p(y) - y),  y = F - m,
        zd = sum e_j,  m = sum e_j x_j / zd,  F = sum e_j f(x_j) / zd.

    f is a polynomial where |x| < ln2/2 and e_j x_j + (exp(S_b,j - max S_b) - e_j) elsewhere; the
    last step (y, log1p(y) - y) runs in float64. The textbook sum p_d (log p_d - log p_b)
    subtracts two log-softmaxes that each carry ~ulp(S) (S is tens, a row's KL ~ dS^2): up to
    1e-3 relative error in float32; E_pd[dS] + log1p(...) in float32 still cancels first-order terms.
    """
    sd = s_dorm.masked_fill(~valid, -math.inf)
    sb = s_base.masked_fill(~valid, -math.inf)
    empty = ~valid.any(-1, keepdim=True)
    md = sd.amax(-1, keepdim=True).masked_fill(empty, 0.0)
    mb = sb.amax(-1, keepdim=True).masked_fill(empty, 0.0)
    x = ((s_dorm - s_base) - (md - mb)).masked_fill(~valid, 0.0)
    ed = torch.exp(sd - md)  # 0 on invalid cells
    small = x.abs() < KL_SMALL
    term = torch.where(small, ed * kl_f_small(torch.where(small, x, 0.0)), ed * x + (torch.exp(sb - mb) - ed))
    zd = ed.sum(-1).masked_fill(empty[..., 0], 1.0).double()
    m, f = (ed * x).sum(-1).double() / zd, term.sum(-1).double() / zd
    y = f - m
    return (f + (torch.log1p(y) - y)).to(s_base.dtype)


def reduce_rows(
    s_base: torch.Tensor,
    s_dorm: torch.Tensor,
    key_valid: torch.Tensor,
    max_scored: torch.Tensor,
    row_valid: torch.Tensor,
    row_pos: torch.Tensor,
    baseline: torch.Tensor,
    offsets: torch.Tensor,
) -> RowStats:
    """Reduce logits [B, Hs, L, K] (keys at absolute positions 0..K-1) to RowStats.

    key_valid [B, L, K]: causal and in range (the softmax support); max_scored [B, L, K]: cells the
    max-type metrics look at; row_valid [B, L]: rows whose KL is summed; row_pos [L]: absolute
    position of each row; baseline [Hs, >=K]: subtracted per offset; offsets [n]: band offsets.
    """
    bsz, n_heads, n_rows, n_keys = s_base.shape
    key_pos = torch.arange(n_keys, device=s_base.device)
    offset = (row_pos[:, None] - key_pos[None, :]).clamp(min=0)  # [L, K]; masked cells are clamped
    ds = (s_dorm - s_base - baseline[:, offset][None]).abs()
    ds = ds.masked_fill(~max_scored[:, None], -math.inf)

    flat = ds.reshape(bsz, n_heads, -1)
    head_max, idx = flat.max(-1)
    head_pos = torch.stack((row_pos[idx // n_keys], idx % n_keys), -1)

    band = torch.zeros(bsz, len(offsets), device=s_base.device)
    over_heads = ds.amax(1)  # [B, L, K]
    for n, r in enumerate(offsets.tolist()):
        cells = over_heads[:, offset == r]
        if cells.numel():
            band[:, n] = cells.amax(-1).clamp(min=0)

    kl = row_kl(s_base, s_dorm, key_valid[:, None].expand_as(s_base))  # [B, Hs, L]
    head_kl = (kl * row_valid[:, None]).sum(-1)
    return RowStats(head_max, head_pos, head_kl, band)


def score_rows(
    q_base: torch.Tensor,
    k_base: torch.Tensor,
    q_dorm: torch.Tensor,
    k_dorm: torch.Tensor,
    prefix_keys: tuple[torch.Tensor, torch.Tensor],
    prefix_len: int,
    cand_len: torch.Tensor,
    dep_len: torch.Tensor,
    heads: torch.Tensor,
    group: int,
    head_dim: int,
    theta: float,
    region: str,
    baseline: torch.Tensor,
    offsets: torch.Tensor,
    cand_start: int | None = None,
) -> RowStats:
    """Score dependent rows from their pre-RoPE q/k.

    q_* [B, L, H, D], k_* [B, L, KV, D]: candidate + suffix tokens (padded to L); prefix_keys: rotated
    prefix keys per model [p, KV, D]; cand_len, dep_len [B]: candidate and candidate+suffix lengths.
    cand_start (default p): where the candidate begins. Incremental extension scores the last
    candidate token as the only dependent candidate row, with the earlier candidate tokens inside the
    cached prefix (cand_start < p); suffix rows then also score the cached candidate keys.
    """
    device = q_base.device
    bsz, n_rows = q_base.shape[:2]
    p = prefix_len
    row_pos = p + torch.arange(n_rows, device=device)
    cos, sin = rope_angles(row_pos, head_dim, theta)
    cos, sin = cos[None, :, None], sin[None, :, None]
    kv_of = heads // group

    logits = []
    for q, k, pk in ((q_base, k_base, prefix_keys[0]), (q_dorm, k_dorm, prefix_keys[1])):
        q_rot = rotate(q[:, :, heads], cos, sin)
        k_rot = rotate(k[:, :, kv_of], cos, sin)
        keys = torch.cat((pk[:, kv_of][None].expand(bsz, -1, -1, -1), k_rot), 1)
        logits.append(attention_logits(q_rot, keys, head_dim))

    t = torch.arange(n_rows, device=device)
    key_pos = torch.arange(p + n_rows, device=device)
    m = key_pos - p  # dependent index of each key (negative for prefix keys)
    row_valid = t[None, :] < dep_len[:, None]  # [B, L]
    key_valid = (m[None, None, :] <= t[None, :, None]) & (m[None, None, :] < dep_len[:, None, None])
    key_valid = key_valid & row_valid[:, :, None]
    if region == "all":
        max_scored = key_valid
    else:
        in_cand_row = t[None, :, None] < cand_len[:, None, None]
        start = p if cand_start is None else cand_start
        cand_key = (key_pos[None, None, :] >= start) & (m[None, None, :] < cand_len[:, None, None])
        max_scored = key_valid & (in_cand_row | cand_key)
    return reduce_rows(logits[0], logits[1], key_valid, max_scored, row_valid, row_pos, baseline, offsets)


def full_logits(weights: Layer0Weights, ids: torch.Tensor) -> torch.Tensor:
    """Dense S [H, T, T] of one whole sequence (causal cells only are meaningful); for plots and checks."""
    cfg = weights.config
    q, k = project(weights, ids)
    cos, sin = rope_angles(torch.arange(len(ids), device=ids.device), cfg.head_dim, cfg.rope_theta)
    q, k = rotate(q, cos[:, None], sin[:, None]), rotate(k, cos[:, None], sin[:, None])
    k = k.repeat_interleave(cfg.group, dim=1)
    return attention_logits(q[None], k[None], cfg.head_dim)[0]
