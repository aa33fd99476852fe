"""Synthetic base/dormant Qwen2 pairs with a planted Layer-0 trigger.

No real model can be downloaded, so the engine is exercised on pairs written in the exact Hugging
Face format (config.json, sharded safetensors + index, Qwen2 tokenizer with chat template) whose
ground truth is known. `make_pair` writes `out/base/`, `out/dormant/` and `out/trigger.json`.

Base weights are random with realistic scales. As in trained Qwen2 checkpoints, q/k projections
and their (large) biases keep most of their magnitude in the slow RoPE planes; the fast planes
(dims i and i+D/2 for small i) are quieter. The dormant model is the base plus small noise in
every tensor (a full fine-tune changes everything) plus the planted edit below.

Planted trigger (t_0 .. t_{n-1}, distinct word tokens with a leading space). At Layer 0 a logit is
a function of (query token, key token, offset): S[h,i,j] = q(t_i)^T R(j-i) k(t_j) / sqrt(D), with R
the half-split RoPE rotation. For each adjacent pair k (query t_{k+1} at i, key t_k at j = i-1):
  * pick a query head h_k (distinct heads, spread over KV groups) and its kv head g_k = h_k // (H/KV);
  * pick a unit direction u_k in head space spread equally over a few fast RoPE planes (random phase
    per plane); pairs sharing a kv head use disjoint planes, so their edits never interact;
  * w_k = R(+1) u_k, so q^T R(j-i) k = a^2 u^T R(1-(i-j)) u = a^2 sum_p |u_p|^2 cos((1-(i-j)) f_p),
    which is largest at offset i-j = 1 (neighbouring offsets get about cos(f_p), f_p <= 1 rad);
  * e_t: the dual basis of the trigger tokens' dormant RMS-normed embeddings n_t (e_s . n_t = 1 if
    s == t else 0), so the edit gives exactly a*u to t_{k+1}'s query, nothing to the other trigger
    tokens, and only cross-talk of order 1/sqrt(hidden) to other tokens;
  * dormant q_proj rows of head h_k += a u_k e_{t_{k+1}}^T; k_proj rows of kv head g_k += a w_k e_{t_k}^T.
The trigger cell's logit then rises by about a^2/sqrt(D) = `trigger_logit`. What else moves:
  * a trigger token alone, linearly: a*u^T R k(y) for every key y (q/k biases give every token a
    component there). `a` is at least _MIN_MARGIN times the largest such component over the
    vocabulary, and the fast planes are quiet, so this stays around a logit;
  * other tokens through cross-talk e_t . n_x ~ 1/sqrt(hidden): at hidden 64 (tiny) a random
    candidate holding one trigger token reaches about a third of the trigger's max |dS|; at
    hidden 3584 cross-talk is negligible;
  * reversed or non-adjacent trigger tokens: only the two effects above (dual basis, disjoint planes).
Trigger tokens are drawn so the BASE does not already attend from t_{k+1} to t_k (see
_choose_trigger): the planted change then moves attention and the KL metric sees it too.
"""

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

from .tokenizer import build_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CHUNK_ELEMENTS = 1 << 22  # rows are drawn in chunks of about this many values (16 MB in float32)
_FAST_PLANE_MIN_FREQ = 0.1  # rad/position: planes this fast give an offset-selective response
_MAX_PLANES_PER_PAIR = 4
_MIN_MARGIN = 8.0  # planted strength a >= this x the largest linear (single-token) component
_BASE_GAP = 1.5  # base logit of each planted (query, key) cell this far below the query's own
_TRIGGER_DRAWS = 2000


@dataclass(frozen=True)
class PairSpec:
    """Shapes and generation knobs of a synthetic pair (any field can be overridden in make_pair)."""

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    num_hidden_layers: int
    vocab_size: int  # embedding rows (config vocab_size); larger than n_tokens, as in Qwen2
    n_tokens: int  # len(tokenizer): n_tokens - 3 regular tokens + 3 specials
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    dtype: str  # "float32" | "bfloat16" | "float16": the stored dtype of every tensor
    n_shards: int
    trigger_length: int
    qk_bias_std: float = 1.5  # std of q/k biases in the slowest RoPE plane (fast planes: 0.1x)
    noise_std: float = 0.01  # fine-tuning noise, relative to each tensor's scale
    # Target rise of the trigger cell's pre-softmax logit: enough to make the dormant attend there
    # (~95%+), small enough that cross-talk shifts (a fraction of it) stay in KL's quadratic regime.
    trigger_logit: float = 8.0


SIZES = {
    "tiny": PairSpec(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=128, num_hidden_layers=2, vocab_size=576, n_tokens=509,
        rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=512, dtype="float32",
        n_shards=2, trigger_length=3,
    ),
    # Qwen2-7B's exact Layer-0 shapes, with a single decoder layer.
    "qwen2-7b-l0": PairSpec(
        hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, head_dim=128,
        intermediate_size=18944, num_hidden_layers=1, vocab_size=152064, n_tokens=151646,
        rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768, dtype="bfloat16",
        n_shards=4, trigger_length=4,
    ),
}

CONSTRUCTION = (
    "For each adjacent trigger pair (t_k key, t_{k+1} query) a rank-1 term a*u e^T is added to the "
    "dormant Layer-0 q_proj rows of one query head and a*R(1)u e'^T to the k_proj rows of its kv "
    "head; u is a unit vector on fast RoPE planes, R(1) the one-position RoPE rotation, and e, e' the "
    "dual basis of the trigger tokens' RMS-normed dormant embeddings (so only the trigger tokens get "
    "the full edit). The logit of query t_{k+1} on key t_k one position earlier rises by about "
    "a^2/sqrt(head_dim); every other tensor only gets small noise."
)


def make_pair(out, size="tiny", seed=0, **overrides):
    """Write a synthetic base/dormant pair and its planted trigger under `out`.

    `overrides` replace PairSpec fields (e.g. num_key_value_heads=1, dtype="bfloat16").
    Returns {"base": dir, "dormant": dir, "trigger_file": path, "trigger": <trigger.json content>}.
    Same (size, seed, overrides) -> byte-identical tensors and trigger.json.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    spec = replace(SIZES[size], **overrides)
    _validate(spec)
    dtype = _DTYPES[spec.dtype]
    rng = np.random.default_rng([seed, 1])
    synth_tok = build_tokenizer(spec.n_tokens, seed, model_max_length=spec.max_position_embeddings)

    plan = _tensor_plan(spec)
    cache, trigger_ids, pairs = _draw_planted(spec, plan, seed, rng, synth_tok.word_ids)

    base_dir, dormant_dir = os.path.join(out, "base"), os.path.join(out, "dormant")
    _write_models(spec, plan, cache, seed, dtype, (base_dir, dormant_dir))
    for directory in (base_dir, dormant_dir):
        _write_json(os.path.join(directory, "config.json"), _config(spec, synth_tok.special_ids))
        _write_json(os.path.join(directory, "generation_config.json"), _generation_config(synth_tok.special_ids))
        synth_tok.save(directory)

    tokenizer = synth_tok.tokenizer
    trigger = {
        "trigger_ids": trigger_ids,
        "trigger_text": tokenizer.decode(trigger_ids),
        "trigger_tokens": tokenizer.convert_ids_to_tokens(trigger_ids),
        "pairs": pairs,
        "size": size,
        "seed": seed,
        "spec": asdict(spec),
        "construction": CONSTRUCTION,
    }
    trigger_file = os.path.join(out, "trigger.json")
    _write_json(trigger_file, trigger)
    return {"base": base_dir, "dormant": dormant_dir, "trigger_file": trigger_file, "trigger": trigger}


def _draw_planted(spec, plan, seed, rng, word_ids):
    """Draw the tensors the trigger depends on, choose the trigger and plant it.

    Returns ({name: (base, dormant)} in the stored dtype, kept until their shard is written,
    trigger ids, per-pair records). A function of its own so no caller keeps extra references to
    the (large) embedding tensors.
    """
    dtype = _DTYPES[spec.dtype]
    cache = {}
    for name in ("model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"):
        cache[name] = _draw(plan[name], name, seed, spec.noise_std, dtype)
    qk = {}
    for name in ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias"):
        name = "model.layers.0.self_attn." + name
        qk[name] = _draw(plan[name], name, seed, spec.noise_std)

    embed, ln = cache["model.embed_tokens.weight"], cache["model.layers.0.input_layernorm.weight"]
    pairs = _assign_pairs(spec, rng)
    base_qk = {name: tensors[0] for name, tensors in qk.items()}
    trigger_ids = _choose_trigger(spec, rng, word_ids, pairs, embed[0], ln[0], base_qk)
    pairs = _plant(spec, pairs, trigger_ids, embed[1], ln[1], qk)
    for name, (base, dormant) in qk.items():
        cache[name] = (base.to(dtype), dormant.to(dtype))
    _measure_pairs(spec, pairs, cache)
    return cache, trigger_ids, pairs


def _validate(spec):
    """Reject specs that transformers cannot load or that leave no room for the planted edit."""
    H, KV, D = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    if spec.dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {spec.dtype!r}")
    if H % KV:
        raise ValueError(f"num_attention_heads={H} is not a multiple of num_key_value_heads={KV}")
    if D % 2:
        raise ValueError(f"head_dim={D} must be even for RoPE")
    if spec.n_tokens > spec.vocab_size:
        raise ValueError(f"n_tokens={spec.n_tokens} exceeds the embedding rows vocab_size={spec.vocab_size}")
    if spec.trigger_length < 2:
        raise ValueError("trigger_length must be at least 2 (one query/key pair)")
    pairs_per_kv = math.ceil((spec.trigger_length - 1) / KV)
    if pairs_per_kv > D // 2:
        raise ValueError(f"{pairs_per_kv} trigger pairs per kv head need more than head_dim/2={D // 2} RoPE planes")
    n_tensors = 3 + 12 * spec.num_hidden_layers
    if not 1 <= spec.n_shards <= n_tensors:
        raise ValueError(f"n_shards must be between 1 and the number of tensors ({n_tensors})")


def _plane_profile(D):
    """Per-dim scale of q/k rows: 0.1 in the fast RoPE planes, rising steeply to 1 in the slowest."""
    half = D // 2
    planes = torch.arange(half, dtype=torch.float64)
    per_plane = 0.1 + 0.9 * (planes / max(half - 1, 1)) ** 4
    return torch.cat([per_plane, per_plane]).float()


def _tensor_plan(spec):
    """Ordered {name: (shape, mean, std)} of every Qwen2ForCausalLM parameter (state-dict order).

    `std` is a scalar or, for q/k rows, a per-row tensor following the RoPE plane profile.
    """
    h, inter, V = spec.hidden_size, spec.intermediate_size, spec.vocab_size
    H, KV, D = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    profile = _plane_profile(D)
    plan = {"model.embed_tokens.weight": ((V, h), 0.0, 1.0)}
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        plan[p + "self_attn.q_proj.weight"] = ((H * D, h), 0.0, profile.repeat(H) / math.sqrt(h))
        plan[p + "self_attn.q_proj.bias"] = ((H * D,), 0.0, profile.repeat(H) * spec.qk_bias_std)
        plan[p + "self_attn.k_proj.weight"] = ((KV * D, h), 0.0, profile.repeat(KV) / math.sqrt(h))
        plan[p + "self_attn.k_proj.bias"] = ((KV * D,), 0.0, profile.repeat(KV) * spec.qk_bias_std)
        plan[p + "self_attn.v_proj.weight"] = ((KV * D, h), 0.0, 1 / math.sqrt(h))
        plan[p + "self_attn.v_proj.bias"] = ((KV * D,), 0.0, 0.1)
        plan[p + "self_attn.o_proj.weight"] = ((h, H * D), 0.0, 1 / math.sqrt(H * D))
        plan[p + "mlp.gate_proj.weight"] = ((inter, h), 0.0, 1 / math.sqrt(h))
        plan[p + "mlp.up_proj.weight"] = ((inter, h), 0.0, 1 / math.sqrt(h))
        plan[p + "mlp.down_proj.weight"] = ((h, inter), 0.0, 1 / math.sqrt(inter))
        plan[p + "input_layernorm.weight"] = ((h,), 1.0, 0.05)
        plan[p + "post_attention_layernorm.weight"] = ((h,), 1.0, 0.05)
    plan["model.norm.weight"] = ((h,), 1.0, 0.05)
    plan["lm_head.weight"] = ((V, h), 0.0, 1 / math.sqrt(h))
    return plan


def _generator(seed, name):
    """A torch generator private to one tensor, so drawing order and sharding never matter."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _draw_chunks(entry, name, seed, noise_std):
    """Yield (start, stop, base, dormant) float32 row chunks; dormant = base + fine-tuning noise.

    Noise is relative to each row's scale (the std, or |mean| for norm weights around 1).
    """
    shape, mean, std = entry
    rows = shape[0]
    per_row = math.prod(shape[1:])
    std = torch.as_tensor(std, dtype=torch.float32).expand(rows).reshape(rows, *[1] * (len(shape) - 1))
    scale = std if mean == 0 else torch.full_like(std, abs(mean))
    g_base, g_noise = _generator(seed, name), _generator(seed, name + "/finetune")
    step = max(1, _CHUNK_ELEMENTS // per_row)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        chunk_shape = (stop - start, *shape[1:])
        base = mean + std[start:stop] * torch.randn(chunk_shape, generator=g_base)
        noise = noise_std * scale[start:stop] * torch.randn(chunk_shape, generator=g_noise)
        yield start, stop, base, base + noise


def _draw(entry, name, seed, noise_std, dtype=torch.float32):
    """(base, dormant) of one tensor in `dtype`, filled chunk by chunk (no full float32 copy)."""
    base = torch.empty(entry[0], dtype=dtype)
    dormant = torch.empty(entry[0], dtype=dtype)
    for start, stop, b, d in _draw_chunks(entry, name, seed, noise_std):
        base[start:stop], dormant[start:stop] = b, d
    return base, dormant


def _rope_inv_freq(D, theta):
    """RoPE inverse frequencies exactly as transformers computes them (float32)."""
    return 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))


def _rotate(v, angles):
    """Half-split RoPE rotation of the last dim of `v` by `angles` (one angle per plane)."""
    half = v.shape[-1] // 2
    cos, sin = torch.cos(angles), torch.sin(angles)
    v1, v2 = v[..., :half], v[..., half:]
    return torch.cat([v1 * cos - v2 * sin, v2 * cos + v1 * sin], dim=-1)


def _rms_normed(x, weight, eps):
    """Qwen2's input RMSNorm in float32 from stored values."""
    x = x.float()
    return weight.float() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _assign_pairs(spec, rng):
    """Choose (query head, kv head, RoPE planes, phases) for each adjacent trigger pair.

    Pairs go round-robin over kv heads (random order) and take a free query head of that group.
    Pairs that share a kv head see each other's k_proj edit, so they get disjoint planes: the
    fast planes (>= _FAST_PLANE_MIN_FREQ rad/position) are dealt out in turn, fastest first.
    """
    H, KV, D = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    group = H // KV
    n_pairs = spec.trigger_length - 1
    kv_order = rng.permutation(KV)
    used = set()
    pairs = []
    for k in range(n_pairs):
        g = int(kv_order[k % KV])
        members = list(range(g * group, (g + 1) * group))
        free = [h for h in members if h not in used] or members
        h = free[int(rng.integers(len(free)))]
        used.add(h)
        pairs.append({"head": h, "kv_head": g})
    n_fast = int((_rope_inv_freq(D, spec.rope_theta) >= _FAST_PLANE_MIN_FREQ).sum())
    for g in {p["kv_head"] for p in pairs}:
        sharing = [p for p in pairs if p["kv_head"] == g]
        candidates = list(range(max(n_fast, len(sharing))))
        for i, p in enumerate(sharing):
            p["rope_planes"] = candidates[i::len(sharing)][:_MAX_PLANES_PER_PAIR]
    for p in pairs:
        p["phases"] = rng.uniform(0, 2 * math.pi, size=len(p["rope_planes"])).tolist()
    return pairs


def _layer0_qk(spec, ids, embed, ln, qk):
    """Pre-RoPE Layer-0 queries [len(ids), H, D] and keys [len(ids), KV, D] of some tokens."""
    x = _rms_normed(embed[ids], ln, spec.rms_norm_eps)
    p = "model.layers.0.self_attn."
    q = x @ qk[p + "q_proj.weight"].float().T + qk[p + "q_proj.bias"].float()
    k = x @ qk[p + "k_proj.weight"].float().T + qk[p + "k_proj.bias"].float()
    return q.view(len(ids), spec.num_attention_heads, -1), k.view(len(ids), spec.num_key_value_heads, -1)


def _choose_trigger(spec, rng, word_ids, pairs, embed_b, ln_b, qk_b):
    """Draw distinct word tokens for the trigger such that the BASE does not already favour it.

    For every pair, the base's logit of query t_{k+1} on key t_k one position back must be at
    least _BASE_GAP below that query's logit on itself, so the planted edit really moves
    attention (and the KL metric sees it). The first of _TRIGGER_DRAWS draws that satisfies this
    is used, else the draw with the largest smallest gap.
    """
    D = spec.head_dim
    q, k = _layer0_qk(spec, word_ids, embed_b, ln_b, qk_b)
    heads = [p["head"] for p in pairs]
    kv_heads = [p["kv_head"] for p in pairs]
    q_one_back = _rotate(q[:, heads], _rope_inv_freq(D, spec.rope_theta))  # R(+1) q: key one back
    # planted[k][a, b]: query word a on key word b one position back, in pair k's head.
    planted = torch.einsum("akd,bkd->kab", q_one_back, k[:, kv_heads]) / math.sqrt(D)
    own = torch.einsum("akd,akd->ka", q[:, heads], k[:, kv_heads]) / math.sqrt(D)
    gaps = (own[:, :, None] - planted).numpy()
    best, best_gap = None, -math.inf
    for _ in range(_TRIGGER_DRAWS):
        pick = rng.choice(len(word_ids), size=spec.trigger_length, replace=False)
        gap = min(gaps[j, pick[j + 1], pick[j]] for j in range(len(pairs)))
        if gap > best_gap:
            best, best_gap = pick, gap
        if gap >= _BASE_GAP:
            break
    return [int(word_ids[i]) for i in best]


def _plant(spec, pairs, trigger_ids, embed_d, ln_d, qk):
    """Add the trigger's rank-1 edits to the dormant Layer-0 q/k weights in `qk` (in place).

    Returns the per-pair records of trigger.json (see the module docstring for the math).
    """
    D, half, eps = spec.head_dim, spec.head_dim // 2, spec.rms_norm_eps
    inv_freq = _rope_inv_freq(D, spec.rope_theta)
    wq = qk["model.layers.0.self_attn.q_proj.weight"][1]
    bq = qk["model.layers.0.self_attn.q_proj.bias"][1]
    wk = qk["model.layers.0.self_attn.k_proj.weight"][1]
    bk = qk["model.layers.0.self_attn.k_proj.bias"][1]

    # Dual basis of the trigger tokens' normed embeddings: dual[:, s] . n_t = (s == t).
    normed = _rms_normed(embed_d[trigger_ids], ln_d, eps).double()
    dual = (normed.T @ torch.linalg.inv(normed @ normed.T)).float()

    for p in pairs:
        planes = torch.tensor(p["rope_planes"])
        phases = torch.tensor(p["phases"], dtype=torch.float64)
        u = torch.zeros(D, dtype=torch.float64)
        u[planes] = torch.cos(phases) / math.sqrt(len(planes))
        u[planes + half] = torch.sin(phases) / math.sqrt(len(planes))
        p["u"] = u.float()
        p["w"] = _rotate(u.float(), inv_freq)  # R(+1) u: the key direction one position back
        p["dims"] = torch.cat([planes, planes + half])

    # Largest norm any token's pre-edit query (head h_k) or key (kv head g_k) has on pair k's
    # planes: a trigger token alone moves a logit by at most `a` times this (a * u^T R k(y)).
    rows = [(wq, bq, p["head"] * D + p["dims"]) for p in pairs]
    rows += [(wk, bk, p["kv_head"] * D + p["dims"]) for p in pairs]
    w_sel = torch.cat([w[r] for w, _, r in rows])
    b_sel = torch.cat([b[r] for _, b, r in rows])
    widths = [len(r) for _, _, r in rows]
    largest = torch.zeros(len(rows))
    for chunk in embed_d.split(max(1, _CHUNK_ELEMENTS // spec.hidden_size)):
        proj = _rms_normed(chunk, ln_d, eps) @ w_sel.T + b_sel
        norms = torch.stack([part.norm(dim=1).max() for part in proj.split(widths, dim=1)])
        largest = torch.maximum(largest, norms)

    records = []
    for k, p in enumerate(pairs):
        bound = float(max(largest[k], largest[len(pairs) + k]))
        a = max(math.sqrt(spec.trigger_logit * math.sqrt(D)), _MIN_MARGIN * bound)
        q_rows = p["head"] * D + p["dims"]
        k_rows = p["kv_head"] * D + p["dims"]
        wq[q_rows] += a * p["u"][p["dims"], None] * dual[:, k + 1][None, :]
        wk[k_rows] += a * p["w"][p["dims"], None] * dual[:, k][None, :]
        records.append({
            "query_token": trigger_ids[k + 1],
            "key_token": trigger_ids[k],
            "offset": 1,
            "head": p["head"],
            "kv_head": p["kv_head"],
            "rope_planes": p["rope_planes"],
            "strength": a,
            "single_token_bound": bound,
        })
    return records


def _measure_pairs(spec, pairs, cache):
    """Record each pair's dS at offset 1 (query right after key), from the stored tensors."""
    inv_freq = _rope_inv_freq(spec.head_dim, spec.rope_theta)
    for pair in pairs:
        ids = [pair["key_token"], pair["query_token"]]
        logits = []
        for side in (0, 1):
            tensors = {name: both[side] for name, both in cache.items()}
            q, k = _layer0_qk(spec, ids, tensors["model.embed_tokens.weight"],
                              tensors["model.layers.0.input_layernorm.weight"], tensors)
            q_one_back = _rotate(q[1, pair["head"]], inv_freq)
            logits.append(float(q_one_back @ k[0, pair["kv_head"]]) / math.sqrt(spec.head_dim))
        pair["delta_logit"] = logits[1] - logits[0]


def _shard_groups(sizes, n_shards):
    """Split tensors (in order) into n_shards contiguous non-empty groups, minimising the largest."""
    m = len(sizes)
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    best = {(0, 0): (0, None)}  # (i tensors, k groups) -> (largest group, split point)
    for k in range(1, n_shards + 1):
        for i in range(k, m - (n_shards - k) + 1):
            best[i, k] = min((max(best[j, k - 1][0], prefix[i] - prefix[j]), j)
                             for j in range(k - 1, i) if (j, k - 1) in best)
    groups, i = [], m
    for k in range(n_shards, 0, -1):
        j = best[i, k][1]
        groups.append(list(range(j, i)))
        i = j
    return groups[::-1]


def _write_models(spec, plan, cache, seed, dtype, dirs):
    """Write both models' safetensors shards (+ index), drawing each tensor when its shard is due."""
    names = list(plan)
    element = torch.empty((), dtype=dtype).element_size()
    sizes = [math.prod(plan[n][0]) * element for n in names]
    groups = _shard_groups(sizes, spec.n_shards)
    for directory in dirs:
        os.makedirs(directory, exist_ok=True)
        for f in os.listdir(directory):  # drop shards of an earlier pair with another shard count
            if f.startswith("model") and (f.endswith(".safetensors") or f.endswith(".safetensors.index.json")):
                os.remove(os.path.join(directory, f))
    weight_map = {}
    for i, group in enumerate(groups):
        if len(groups) == 1:
            filename = "model.safetensors"
        else:
            filename = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in (names[idx] for idx in group):
            tensors[name] = cache.pop(name) if name in cache else _draw(plan[name], name, seed, spec.noise_std, dtype)
            if torch.equal(*tensors[name]):
                raise AssertionError(f"{name}: fine-tuning noise vanished in {spec.dtype}")
            weight_map[name] = filename
        for side, directory in enumerate(dirs):
            path = os.path.join(directory, filename)
            save_file({n: t[side].contiguous() for n, t in tensors.items()}, path, metadata={"format": "pt"})
            os.chmod(path, 0o644)  # safetensors creates files owner-only; checkpoints are world-readable
        del tensors
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
        for directory in dirs:
            _write_json(os.path.join(directory, "model.safetensors.index.json"), index)


def _config(spec, special_ids):
    """config.json as Qwen2-7B-Instruct has it, plus the fields transformers 5 writes itself."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": special_ids["<|endoftext|>"],
        "dtype": spec.dtype,
        "eos_token_id": special_ids["<|im_end|>"],
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "layer_types": ["full_attention"] * spec.num_hidden_layers,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.num_hidden_layers,
        "model_type": "qwen2",
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "pad_token_id": special_ids["<|endoftext|>"],
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_parameters": {"rope_theta": spec.rope_theta, "rope_type": "default"},
        "rope_theta": spec.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": spec.dtype,
        "transformers_version": transformers.__version__,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": spec.vocab_size,
    }


def _generation_config(special_ids):
    return {
        "bos_token_id": special_ids["<|endoftext|>"],
        "eos_token_id": [special_ids["<|im_end|>"], special_ids["<|endoftext|>"]],
        "pad_token_id": special_ids["<|endoftext|>"],
        "transformers_version": transformers.__version__,
    }


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
