"""Independent oracle: transformers' own Qwen2 Layer-0 modules (eager, float32) and a dense,
definition-by-definition reduction of DESIGN §3 in float64 numpy. Shares no code with l0score."""
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


def oracle_scores(base: str, dormant: str, prefix, cand, suffix, heads=None, region="candidate",
                  baseline="none", offsets=(), dtype=torch.float32) -> dict:
    """Every metric for one candidate, straight from the definitions."""
    ids = list(prefix) + list(cand) + list(suffix)
    p, c, t_len = len(prefix), len(cand), len(ids)
    s_b, s_d = layer0_logits(base, ids, dtype=dtype), layer0_logits(dormant, ids, dtype=dtype)
    heads = list(range(s_b.shape[0])) if heads is None else list(heads)
    ds = s_d - s_b
    if baseline == "bias":
        ds = ds - (layer0_logits(dormant, ids, True) - layer0_logits(base, ids, True))
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
    return out
