"""Independent oracle: transformers' own Qwen2 Layer-0 modules (eager, float32) and a dense,
definition-by-definition reduction of docs/metrics.md in float64 numpy. Shares no code with l0score."""
from __future__ import annotations

import functools

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv


@functools.lru_cache(maxsize=8)
def load_model(model_dir: str, dtype: torch.dtype = torch.float32):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    return model.eval()


@torch.no_grad()
def layer0_logits(model_dir: str, ids: list[int], bias_only: bool = False, dtype=torch.float32) -> np.ndarray:
    """Pre-softmax Layer-0 logits S [H, T, T] of a full sequence (upper triangle not meaningful);
    dtype=torch.bfloat16 runs the modules the way a bf16 model does (every step rounded)."""
    model = load_model(str(model_dir), dtype)
    attn = model.model.layers[0].self_attn
    ids_t = torch.tensor([ids])
    hidden = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids_t))
    d = attn.head_dim
    if bias_only:
        q = attn.q_proj.bias.expand(1, len(ids), -1)
        k = attn.k_proj.bias.expand(1, len(ids), -1)
    else:
        q, k = attn.q_proj(hidden), attn.k_proj(hidden)
    q = q.view(1, len(ids), -1, d).transpose(1, 2)
    k = k.view(1, len(ids), -1, d).transpose(1, 2)
    cos, sin = model.model.rotary_emb(hidden, torch.arange(len(ids))[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, attn.num_key_value_groups)
    return (torch.matmul(q, k.transpose(2, 3)) * attn.scaling)[0].double().numpy()


@torch.no_grad()
def layer0_logits64(model_dir: str, ids: list[int], bias_only: bool = False, norms: bool = False) -> np.ndarray:
    """S [H, T, T] in float64 from the checkpoint's values (the float64 oracle of tests/test_precision.py).

    The same transformers Layer-0 modules' parameters (loaded in float32: a bf16 checkpoint's values
    are exact there), with every step in float64: embedding, RMSNorm (done here, since transformers'
    Qwen2RMSNorm computes in float32 whatever the model dtype), q/k projections, RoPE with
    transformers' own cos/sin (float32 by definition, docs/architecture.md#the-layer-0-score-exactly, widened exactly), dot / sqrt(D)."""
    model = load_model(str(model_dir), torch.float32)
    attn = model.model.layers[0].self_attn
    norm = model.model.layers[0].input_layernorm
    ids_t = torch.tensor([ids])
    x = model.model.embed_tokens(ids_t).double()
    h = norm.weight.double() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))
    d = attn.head_dim
    wq, bq = attn.q_proj.weight.double(), attn.q_proj.bias.double()
    wk, bk = attn.k_proj.weight.double(), attn.k_proj.bias.double()
    if bias_only:
        q, k = bq.expand(1, len(ids), -1), bk.expand(1, len(ids), -1)
    else:
        q, k = h @ wq.T + bq, h @ wk.T + bk
    q = q.view(1, len(ids), -1, d).transpose(1, 2)
    k = k.view(1, len(ids), -1, d).transpose(1, 2)
    cos, sin = model.model.rotary_emb(x.float(), torch.arange(len(ids))[None])
    q, k = apply_rotary_pos_emb(q, k, cos.double(), sin.double())
    k = repeat_kv(k, attn.num_key_value_groups)
    if norms:  # |q_i| |k_j| / sqrt(D) [H, T, T]: the scale of a cell's float32 rounding
        return (q.norm(dim=-1)[..., :, None] * k.norm(dim=-1)[..., None, :] / np.sqrt(d))[0].numpy()
    return (torch.matmul(q, k.transpose(2, 3)) / np.sqrt(d))[0].numpy()


def oracle_scores(base: str, dormant: str, prefix, cand, suffix, heads=None, region="candidate",
                  baseline="none", offsets=(), dtype=torch.float32, reduce64: bool = False) -> dict:
    """Every metric for one candidate, straight from the definitions. dtype=torch.float64: the
    logits from layer0_logits64 (every step in float64). reduce64: the dtype logits (transformers'
    modules) cast to float64 before dS, softmax and KL, i.e. only the logits' own rounding remains."""
    ids = list(prefix) + list(cand) + list(suffix)
    p, c, t_len = len(prefix), len(cand), len(ids)
    if dtype == torch.float64:
        logits = lambda m, bias_only=False: layer0_logits64(m, ids, bias_only)
    else:
        logits = lambda m, bias_only=False: layer0_logits(m, ids, bias_only, dtype=dtype)
    s_b, s_d = logits(base), logits(dormant)
    if reduce64:
        s_b, s_d = s_b.astype(np.float64), s_d.astype(np.float64)
    heads = list(range(s_b.shape[0])) if heads is None else list(heads)
    ds = s_d - s_b
    if baseline == "bias":
        ds = ds - (logits(dormant, True) - logits(base, True))
    i_idx, j_idx = np.meshgrid(np.arange(t_len), np.arange(t_len), indexing="ij")
    causal = j_idx <= i_idx
    in_cand = lambda x: (x >= p) & (x < p + c)
    scored = causal & ((in_cand(i_idx) | in_cand(j_idx)) if region == "candidate" else True)
    rows = np.arange(t_len) >= (p if region == "candidate" else 0)

    out = {"head_max": [], "head_kl": [], "cells": []}
    for h in heads:
        a = np.where(scored, np.abs(ds[h]), -np.inf)
        out["head_max"].append(a.max())
        kl = 0.0
        for i in np.flatnonzero(rows):
            lp_d = s_d[h, i, : i + 1] - np.logaddexp.reduce(s_d[h, i, : i + 1])
            lp_b = s_b[h, i, : i + 1] - np.logaddexp.reduce(s_b[h, i, : i + 1])
            kl += float(np.sum(np.exp(lp_d) * (lp_d - lp_b)))
        out["head_kl"].append(kl)
        out["cells"].append(a)
    cells = np.stack(out.pop("cells"))
    hh, ii, jj = np.unravel_index(np.argmax(cells), cells.shape)
    out["max_abs"] = float(cells.max())
    out["argmax"] = (heads[hh], int(ii), int(jj))
    out["kl"] = float(sum(out["head_kl"]))
    band = []
    for r in offsets:
        sel = scored & (i_idx - j_idx == r)
        band.append(float(cells[:, sel].max()) if sel.any() else 0.0)
    out["band"] = band
    if dtype == torch.float64:  # per head: the largest |q||k|/sqrt(D) of a scored cell, both models summed
        nrm = layer0_logits64(base, ids, norms=True) + layer0_logits64(dormant, ids, norms=True)
        out["cell_scale"] = [float(np.where(scored, nrm[h], 0.0).max()) for h in heads]
    return out
