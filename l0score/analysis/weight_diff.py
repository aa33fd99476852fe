"""Weight-diff analysis that seeds the search (`l0score analyze`).

Two passes, never instantiating a model:

1. Every tensor of both checkpoints, one pair at a time, read in row chunks through safetensors
   memory maps that are closed after each chunk: Frobenius norm of the delta,
   its norm relative to the base tensor, and for 2-D deltas the singular-value statistics
   sigma1, top-16 energy share, number of singular values holding 90% of the energy, and the
   entropy effective rank. The spectrum comes from one of three methods, recorded per tensor:
     "svdvals"    torch.linalg.svdvals of the float64 delta (small tensors);
     "gram-eigh"  eigvalsh of the float64 Gram matrix of the smaller side, accumulated over
                  chunks: the full spectrum, many times faster than a dense SVD (errors in
                  sigma of order 1e-8 sigma1, irrelevant to the statistics below);
     "randomized" torch.svd_lowrank (randomized range finder with power iterations, seeded):
                  the top `RANDOMIZED_RANK` singular values. The Frobenius norm is exact, so the
                  top-16 share is exact up to the accuracy of the top singular values; rank90 and
                  the effective rank extend the spectrum with a flat tail holding the remaining
                  energy and are marked as estimates ("exact": false).
   Peak memory is one float32 delta (the size of the largest tensor pair when stored in bf16,
   half of it in float32) plus chunk buffers; a model is never instantiated.
2. Layer 0 in detail: per-head blocks of the q_proj and k_proj deltas (spectral norm, top-16
   energy, spike ratio sigma1 / median singular value), the focus heads (query heads ranked by
   sigma1 x top-16 energy share of their q_proj block, cut at the largest score ratio), the tokens whose
   RMS-normed dormant embeddings align with the top right-singular vectors of the focus heads'
   blocks (the seed tokens), the bias-only dS template per head, and the embedding rows that
   changed most.

Outputs in `out_dir`: analysis.json, summary.md, delta_norms.png, head_spectra.png,
bias_template.png.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from ..core.checkpoint import (LAYER0_KEYS, CheckpointError, check_compatible, list_tensors, read_config,
                         resolve_model_dir)

TOP_K_ENERGY = 16
CHUNK_ELEMENTS = 1 << 22  # elements per row chunk (32 MB in float64)
SVDVALS_MAX_COST = 1e8  # r^2 * max(m, n) up to which a dense svdvals is used (it is slow on wide
# matrices: 11 s for 512 x 3584, against 0.3 s through the Gram matrix)
GRAM_MAX_FLOPS = 1e12  # 2 * m * n * r up to which the full spectrum comes from the Gram matrix
RANDOMIZED_RANK = 64  # singular values estimated by the randomized method
RANDOMIZED_NITER = 4  # power iterations
SVD_MODES = ("auto", "full", "randomized")
FOCUS_MIN_RATIO = 2.0  # a focus cut needs this ratio between neighbouring head scores
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


# --------------------------------------------------------------------------------------------
# Checkpoint pairing


def _pair_entries(base_dir: Path, dormant_dir: Path):
    """Tensor entries of both checkpoints after checking they describe the same architecture."""
    check_compatible(SimpleNamespace(path=base_dir, config=read_config(base_dir)),
                     SimpleNamespace(path=dormant_dir, config=read_config(dormant_dir)))
    tb, td = list_tensors(base_dir), list_tensors(dormant_dir)
    only_b, only_d = sorted(set(tb) - set(td)), sorted(set(td) - set(tb))
    if only_b or only_d:
        parts = []
        for label, names, where in (("base", only_b, dormant_dir), ("dormant", only_d, base_dir)):
            if names:
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                parts.append(f"{len(names)} tensor(s) of the {label} are missing from {where}: "
                             f"{', '.join(names[:5])}{more}")
        raise CheckpointError("mismatched checkpoints: " + "; ".join(parts))
    for name in tb:
        if tb[name].shape != td[name].shape:
            raise CheckpointError(f"mismatched checkpoints: tensor {name} has shape {tb[name].shape} in "
                                  f"{tb[name].file} but {td[name].shape} in {td[name].file}")
        for e in (tb[name], td[name]):
            if e.dtype not in _FLOAT_DTYPES:
                raise CheckpointError(f"{e.file}: tensor {name} has non-float dtype {e.dtype}")
    return tb, td


def _sort_key(name: str):
    m = re.search(r"layers\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    if "embed" in name:
        return (0, 0, name)
    return (2, 0, name)


def layer_of(name: str) -> str:
    """Group label of a tensor: "embed", the decoder layer index as a string, or "final"."""
    m = re.search(r"layers\.(\d+)\.", name)
    if m:
        return m.group(1)
    return "embed" if "embed" in name else "final"


def module_of(name: str) -> str:
    """Short module label: q_proj, k_proj, ..., input_layernorm, embed_tokens, lm_head, norm."""
    parts = name.split(".")
    if parts[-1] in ("weight", "bias"):
        return parts[-2] + (".bias" if parts[-1] == "bias" else "")
    return parts[-1]


# --------------------------------------------------------------------------------------------
# Spectra


def _svd_method(shape: tuple[int, int], mode: str) -> str:
    m, n = shape
    r = min(m, n)
    if mode == "randomized" and r > 2 * RANDOMIZED_RANK:
        return "randomized"
    if r * r * max(m, n) <= SVDVALS_MAX_COST:
        return "svdvals"
    if mode == "full" or 2.0 * m * n * r <= GRAM_MAX_FLOPS:
        return "gram-eigh"
    return "randomized"


def _gram_singular_values(delta: torch.Tensor) -> torch.Tensor:
    """All singular values from eigvalsh of the float64 Gram matrix of the smaller side."""
    m, n = delta.shape
    if m >= n:
        gram = torch.zeros(n, n, dtype=torch.float64)
        step = max(1, CHUNK_ELEMENTS // n)
        for start in range(0, m, step):
            c = delta[start:start + step].double()
            gram.addmm_(c.T, c)
    else:
        gram = torch.zeros(m, m, dtype=torch.float64)
        step = max(1, CHUNK_ELEMENTS // m)
        for start in range(0, n, step):
            c = delta[:, start:start + step].double()
            gram.addmm_(c, c.T)
    return torch.linalg.eigvalsh(gram).clamp(min=0).flip(0).sqrt()


def _randomized_singular_values(delta: torch.Tensor) -> torch.Tensor:
    """Top RANDOMIZED_RANK singular values by torch.svd_lowrank (seeded, so runs are reproducible)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, s, _ = torch.svd_lowrank(delta, q=RANDOMIZED_RANK, niter=RANDOMIZED_NITER)
    return s


def _read_rows(entry, name: str, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of one tensor. The file is opened per call so the memory map is released
    at once: resident memory stays at what the caller keeps, not the pages touched so far."""
    with safe_open(entry.file, framework="pt") as f:
        if not entry.shape:
            return f.get_tensor(name).reshape(1)
        return f.get_slice(name)[start:stop]


def spectrum_stats(s: torch.Tensor, energy: float, rank: int, exact: bool) -> dict:
    """sigma1, top-16 energy share, rank90 and entropy effective rank of singular values `s`.

    `energy` is the squared Frobenius norm (exact); `rank` = min(m, n). When the spectrum is not
    exact (randomized: only the leading values), the rest of the energy is spread as a flat tail
    over the remaining rank - len(s) values for rank90 and the effective rank.
    """
    s = s.double().clamp(min=0).sort(descending=True).values
    e = s.pow(2)
    out = {"sigma1": float(s[0]) if len(s) else 0.0, "top16_energy": None, "rank90": None,
           "effective_rank": None, "exact": exact,
           "top_singular_values": [_r(v) for v in s[:TOP_K_ENERGY].tolist()]}
    if energy <= 0 or not len(s):
        out.update(top16_energy=0.0, rank90=0, effective_rank=0.0)
        return out
    if not exact:
        tail = max(energy - float(e.sum()), 0.0)
        n_tail = rank - len(s)
        out["tail_energy"] = tail / energy
        if n_tail > 0 and tail > 0:
            level = math.sqrt(tail / n_tail)
            s = torch.cat((s, torch.full((n_tail,), level, dtype=torch.float64)))
            e = s.pow(2)
    out["top16_energy"] = min(1.0, float(e[:TOP_K_ENERGY].sum()) / energy)
    cum = e.cumsum(0) / energy
    out["rank90"] = int(min(len(s), int((cum < 0.9 - 1e-12).sum()) + 1))
    p = s / s.sum()
    p = p[p > 0]
    out["effective_rank"] = float(torch.exp(-(p * p.log()).sum()))
    return out


def _r(v: float, digits: int = 6) -> float:
    return float(f"{v:.{digits}g}")


# --------------------------------------------------------------------------------------------
# Pass 1: every tensor


def _tensor_stats(name: str, eb, ed, mode: str, embed_rows: dict | None) -> dict:
    """Norms and spectrum of one tensor pair.

    The float32 delta is assembled from row chunks read through short-lived memory maps, so the
    peak is one float32 delta (the size of a bf16 tensor pair) plus chunk buffers.
    """
    t0 = time.perf_counter()
    shape = eb.shape
    rows = shape[0] if shape else 1
    row_len = math.prod(shape[1:]) if len(shape) >= 2 else 1
    delta = torch.empty(rows, row_len)
    row_delta = torch.empty(rows, dtype=torch.float64)
    row_base = torch.empty(rows, dtype=torch.float64)
    sq_d = max_abs = 0.0
    step = max(1, CHUNK_ELEMENTS // row_len)
    try:
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            wide = torch.float64 if "F64" in (eb.dtype, ed.dtype) else torch.float32
            cb = _read_rows(eb, name, start, stop).reshape(stop - start, row_len).to(wide)
            cd = _read_rows(ed, name, start, stop).reshape(stop - start, row_len).to(wide)
            delta[start:stop] = cd - cb
            row_base[start:stop] = torch.linalg.vector_norm(cb, dim=1, dtype=torch.float64)
            sq_d += float(torch.linalg.vector_norm(cd, dtype=torch.float64) ** 2)
            row_delta[start:stop] = torch.linalg.vector_norm(delta[start:stop], dim=1, dtype=torch.float64)
            max_abs = max(max_abs, float(delta[start:stop].abs().max()))
            del cb, cd
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"tensor {name}: unreadable ({exc})") from exc
    sq_b, sq_delta = float(row_base.pow(2).sum()), float(row_delta.pow(2).sum())
    if not all(math.isfinite(v) for v in (sq_b, sq_d)):
        raise CheckpointError(f"{eb.file if not math.isfinite(sq_b) else ed.file}: tensor {name} holds NaN or inf values")
    rec = {
        "name": name, "layer": layer_of(name), "module": module_of(name), "shape": list(shape),
        "dtype": eb.dtype if eb.dtype == ed.dtype else f"{eb.dtype}/{ed.dtype}",
        "base_norm": math.sqrt(sq_b), "dormant_norm": math.sqrt(sq_d), "delta_norm": math.sqrt(sq_delta),
        "rel_norm": math.sqrt(sq_delta / sq_b) if sq_b > 0 else None,
        "max_abs_delta": max_abs,
        "svd": None,
    }
    if len(shape) == 2 and min(shape) > 1 and mode is not None:  # None: norms only (layer0_only)
        method = _svd_method(shape, mode)
        if method == "svdvals":
            s = torch.linalg.svdvals(delta.double())
        elif method == "gram-eigh":
            s = _gram_singular_values(delta)
        else:
            s = _randomized_singular_values(delta)
        rec["svd"] = {"method": method, **spectrum_stats(s, sq_delta, min(shape), method != "randomized")}
    if embed_rows is not None:
        embed_rows["delta"], embed_rows["base"] = row_delta, row_base
    rec["seconds"] = time.perf_counter() - t0
    return rec


def _layer_table(tensors: list[dict]) -> list[dict]:
    groups: dict[str, dict] = {}
    for t in tensors:
        g = groups.setdefault(t["layer"], {"layer": t["layer"], "sq_delta": 0.0, "sq_base": 0.0, "n_tensors": 0,
                                           "max_top16_energy": None, "max_top16_tensor": None})
        g["sq_delta"] += t["delta_norm"] ** 2
        g["sq_base"] += t["base_norm"] ** 2
        g["n_tensors"] += 1
        svd = t["svd"]
        if svd and svd["top16_energy"] is not None and (g["max_top16_energy"] is None or svd["top16_energy"] > g["max_top16_energy"]):
            g["max_top16_energy"], g["max_top16_tensor"] = svd["top16_energy"], t["module"]
    out = []
    for g in sorted(groups.values(), key=lambda g: _layer_order(g["layer"])):
        out.append({"layer": g["layer"], "delta_norm": math.sqrt(g["sq_delta"]),
                    "rel_norm": math.sqrt(g["sq_delta"] / g["sq_base"]) if g["sq_base"] > 0 else None,
                    "n_tensors": g["n_tensors"], "max_top16_energy": g["max_top16_energy"],
                    "max_top16_tensor": g["max_top16_tensor"]})
    return out


def _layer_order(label: str):
    return (0, 0) if label == "embed" else (2, 0) if label == "final" else (1, int(label))


# --------------------------------------------------------------------------------------------
# Pass 2: Layer 0 in detail


def _block_stats(delta: torch.Tensor, n_dirs: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Stats of one per-head block [D, hidden] plus its top singular values and right vectors.

    Through eigh of the float64 Gram matrix of the short side (much faster than a wide SVD); the
    right vectors of the leading singular values are recovered as U^T delta / sigma.
    """
    a = delta.double()
    transpose = a.shape[0] > a.shape[1]
    lam, vec = torch.linalg.eigh(a.T @ a if transpose else a @ a.T)
    lam, vec = lam.flip(0).clamp(min=0), vec.flip(1)
    s = lam.sqrt()
    if transpose:
        vh = vec.T
    else:
        vh = (vec[:, :n_dirs].T @ a) / s[:n_dirs, None].clamp(min=1e-300)
    energy = float(s.pow(2).sum())
    med = float(s.median())
    sigma1 = float(s[0])
    spike = 1.0 if sigma1 == 0 else sigma1 / max(med, sigma1 * 1e-9)
    stats = {
        "sigma1": sigma1,
        "top16_energy": float(s[:TOP_K_ENERGY].pow(2).sum()) / energy if energy > 0 else 0.0,
        "spike": spike,
        "frob": math.sqrt(energy),
        "singular_values": [_r(v, 5) for v in s.tolist()],
    }
    return stats, s[:n_dirs].float(), vh[:n_dirs].T.float()


def _select_focus(scores: list[float], n_focus: int | None = None) -> int | None:
    """How many of the descending `scores` stand out: n_focus if given, else the cut at the largest
    ratio between neighbours, provided it is at least FOCUS_MIN_RATIO (None when nothing stands out)."""
    n = len(scores)
    if n_focus is not None:
        return max(1, min(n, n_focus))
    if n == 1:
        return 1
    logs = [math.log(max(v, 1e-300)) for v in scores]
    gaps = [logs[k - 1] - logs[k] for k in range(1, n)]
    k = max(range(len(gaps)), key=lambda i: gaps[i])
    return k + 1 if gaps[k] >= math.log(FOCUS_MIN_RATIO) else None


def _changed_query_keys(delta_q: torch.Tensor, s: torch.Tensor, v: torch.Tensor, wk: torch.Tensor, key_offsets,
                        cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Where one head's changed queries point, as hidden-space vectors to project normed embeddings on.

    The q delta block [D, hidden] = sum_i s_i u_i v_i^T moves a query along the left singular vectors
    u_i; against a key k one offset r back it adds s_i (v_i . n) rot_r(u_i) . k. So a token whose
    dormant key k = Wk n' + bk has a large rot_r(u_i) . k is a key the change is after: with
    z_ir = Wk^T rot_r(u_i), that is n' . z_ir (+ a constant). Returns z [hidden, dirs x offsets]
    (offset-major) and the weights s_i / s_1 of its columns.
    """
    from ..core.reference import rope_angles, rotate

    u = (delta_q.double() @ v.double()) / s.double().clamp(min=1e-300)  # [D, dirs]
    cos, sin = rope_angles(torch.tensor(list(key_offsets)), cfg.head_dim, cfg.rope_theta)
    rotated = rotate(u.T.float()[None], cos[:, None], sin[:, None])  # [offsets, dirs, D]
    z = (rotated.reshape(-1, cfg.head_dim) @ wk).T  # [hidden, offsets x dirs]
    weights = (s / s[0].clamp(min=1e-30)).repeat(len(key_offsets))
    return z, weights


def _key_role_scores(proj: torch.Tensor, weights: list[torch.Tensor], n_offsets: int, excluded) -> torch.Tensor:
    """[tokens, heads] key-role score in [0, 1]: per head, the largest over offsets of the weighted
    norm of a token's centred key projections, relative to the vocabulary's largest."""
    out = torch.zeros(proj.shape[0], len(weights))
    keep = torch.ones(proj.shape[0], dtype=torch.bool)
    keep[list(excluded)] = False
    col = 0
    for n, w in enumerate(weights):
        p = proj[:, col:col + len(w)]
        col += len(w)
        centred = (p - p[keep].mean(0)) * w
        score = centred.view(len(p), n_offsets, -1).pow(2).sum(-1).sqrt().amax(1)
        score[~keep] = 0.0
        out[:, n] = score / score.max().clamp(min=1e-30)
    return out


def _token_repr(tok, tid: int) -> dict:
    if tok is None:
        return {"token": None, "text": None}
    return {"token": tok.convert_ids_to_tokens(int(tid)), "text": tok.decode([int(tid)])}


def _layer0_analysis(pair, n_focus: int | None, top_tokens: int, n_dirs: int, n_offsets: int,
                     embed_rows: dict, progress: bool, key_offsets=(1, 2, 3, 4)) -> dict:
    """Layer 0 by stage: per-head delta blocks -> focus heads -> seed tokens aligned with them ->
    the bias-only dS template -> the embedding rows that changed most."""
    dwq = pair.dormant.wq.float() - pair.base.wq.float()
    heads = _focus_heads(pair, dwq, n_focus, n_dirs)
    seeds = _seed_tokens(pair, heads, dwq, top_tokens, key_offsets, progress)
    return {
        "heads": heads.ranked,
        "kv_heads": heads.kv_heads,
        "focus_heads": heads.focus,
        "focus_kv_heads": heads.focus_kv,
        "focus_rule": heads.rule,
        **seeds,
        "key_offsets": list(key_offsets),
        "bias_template": _bias_template(pair, n_offsets),
        **_embedding_changes(pair, embed_rows),
    }


def _focus_heads(pair, dwq: torch.Tensor, n_focus: int | None, n_dirs: int) -> SimpleNamespace:
    """Per-head q blocks and per-kv-head k blocks of the deltas, the heads ranked by sigma1 x top-16
    energy of their q block, and the focus cut (_select_focus); the rule in words for the summary."""
    cfg = pair.config
    H, KV, D, G = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.group
    base, dorm = pair.base, pair.dormant
    dwk = dorm.wk.float() - base.wk.float()
    dbq = (dorm.bq.float() - base.bq.float()).reshape(H, D)
    dbk = (dorm.bk.float() - base.bk.float()).reshape(KV, D)
    q_blocks = [_block_stats(dwq[h * D:(h + 1) * D], n_dirs) for h in range(H)]
    k_blocks = [_block_stats(dwk[g * D:(g + 1) * D], n_dirs) for g in range(KV)]

    heads = []
    for h in range(H):
        q, k = q_blocks[h][0], k_blocks[h // G][0]
        heads.append({"head": h, "kv_head": h // G, "score": q["sigma1"] * q["top16_energy"],
                      "q_sigma1": q["sigma1"], "q_top16_energy": q["top16_energy"], "q_spike": q["spike"],
                      "q_frob": q["frob"], "k_sigma1": k["sigma1"], "k_top16_energy": k["top16_energy"],
                      "k_spike": k["spike"], "q_bias_delta_norm": float(dbq[h].norm()),
                      "k_bias_delta_norm": float(dbk[h // G].norm()), "q_singular_values": q["singular_values"]})
    ranked = sorted(heads, key=lambda r: (-r["score"], -r["k_sigma1"] * r["k_top16_energy"], r["head"]))
    for rank, r in enumerate(ranked, 1):
        r["rank"] = rank
    n_sel = _select_focus([r["score"] for r in ranked], n_focus)
    focus = [r["head"] for r in ranked[:n_sel or H]]
    kv_heads = [{"kv_head": g, "score": k_blocks[g][0]["sigma1"] * k_blocks[g][0]["top16_energy"],
                 **k_blocks[g][0], "bias_delta_norm": float(dbk[g].norm())} for g in range(KV)]
    kv_ranked = sorted(range(KV), key=lambda g: -kv_heads[g]["score"])
    n_kv = _select_focus([kv_heads[g]["score"] for g in kv_ranked]) if KV > 1 else None
    focus_kv = list(dict.fromkeys([h // G for h in focus] + kv_ranked[:n_kv or 0]))
    if n_focus is not None:
        rule = f"the top {n_sel} (requested)"
    elif n_sel is None:
        rule = f"all heads: no neighbour ratio reaches {FOCUS_MIN_RATIO:g}, nothing stands out"
    else:
        rule = f"the heads above the largest neighbour ratio ({FOCUS_MIN_RATIO:g} at least)"
    rule = ("query heads ranked by score = sigma1 x top-16 energy share of their q_proj delta block "
            f"(ties: the kv head's k_proj block); focus heads = {rule}. Seed blocks: the focus heads' q "
            "blocks, their kv heads' k blocks and any kv head whose k block stands out by the same rule")
    return SimpleNamespace(q_blocks=q_blocks, k_blocks=k_blocks, ranked=ranked, kv_heads=kv_heads, focus=focus,
                           focus_kv=focus_kv, rule=rule)


def _seed_tokens(pair, heads: SimpleNamespace, dwq: torch.Tensor, top_tokens: int, key_offsets,
                 progress: bool) -> dict:
    """Seed tokens, query role: alignment of RMS-normed dormant embeddings with each focus block's
    top right singular vectors, weighted by sigma_i / sigma_1 (score in [0, 1]); key role: the same
    with the focus kv heads' k blocks, and (blocks "kq<h>") the tokens whose dormant keys the changed
    queries of focus head h point at (_changed_query_keys)."""
    from ..core.reference import rms_norm

    cfg, dorm = pair.config, pair.dormant
    D, G = cfg.head_dim, cfg.group
    q_blocks, k_blocks = heads.q_blocks, heads.k_blocks
    blocks = [("q", h, *q_blocks[h][1:]) for h in heads.focus] + [("k", g, *k_blocks[g][1:]) for g in heads.focus_kv]
    vecs = torch.cat([v for *_, v in blocks], 1)  # [hidden, sum dirs]
    weights = torch.cat([s / s[0].clamp(min=1e-30) for *_, s, _ in blocks])
    widths = [v.shape[1] for *_, v in blocks]
    kq = [_changed_query_keys(dwq[h * D:(h + 1) * D], *q_blocks[h][1:], dorm.wk[(h // G) * D:(h // G + 1) * D].float(),
                              key_offsets, cfg) for h in heads.focus]
    kq_vecs = torch.cat([z for z, _ in kq], 1) if kq else torch.empty(cfg.hidden_size, 0)
    n_tok = pair.n_tokens
    block_scores = torch.empty(n_tok, len(blocks))
    kq_proj = torch.empty(n_tok, kq_vecs.shape[1])
    step = max(1, CHUNK_ELEMENTS // cfg.hidden_size)
    for start in tqdm(range(0, n_tok, step), desc="token alignment", unit="chunk", disable=not progress, leave=False):
        stop = min(n_tok, start + step)
        n = rms_norm(dorm, dorm.embed[start:stop])
        kq_proj[start:stop] = n @ kq_vecs  # key projections (the k bias is the same for every token)
        n = n / n.norm(dim=1, keepdim=True).clamp(min=1e-30)
        w = (n @ vecs) * weights  # [rows, sum dirs]
        block_scores[start:stop] = torch.stack([c.pow(2).sum(1).sqrt() for c in w.split(widths, 1)], 1)
    excluded = sorted(i for i in pair.special_ids if i < n_tok)
    kq_scores = _key_role_scores(kq_proj, [w for _, w in kq], len(key_offsets), excluded)
    blocks += [("kq", h, q_blocks[h][1], None) for h in heads.focus]
    block_scores = torch.cat((block_scores, kq_scores), 1)
    block_scores[excluded] = -1.0
    best, best_block = block_scores.max(1)
    k = min(top_tokens, n_tok - len(excluded))
    top_vals, top_ids = best.topk(k)
    seed_ids = [int(i) for i in top_ids]
    # The two sources ranked on their own (their scores are on different scales): embedding alignment
    # with the q/k delta directions, and keys the changed queries point at. A consumer that wants both
    # roles represented interleaves them (the hunt does).
    n_align = len(blocks) - kq_scores.shape[1]
    by_source = {"alignment": [int(i) for i in block_scores[:, :n_align].max(1).values.topk(k).indices],
                 "changed_query_keys": [int(i) for i in block_scores[:, n_align:].max(1).values.topk(k).indices]
                 if kq_scores.shape[1] else []}
    details = _seed_details(pair, blocks, vecs, widths, seed_ids, top_vals.tolist(), best_block)
    per_block = {}
    for bi, (kind, idx, _, _) in enumerate(blocks):
        vals, ids = block_scores[:, bi].topk(min(10, k))
        per_block[f"{kind}{idx}"] = [{"id": int(i), **_token_repr(pair.tokenizer, int(i)), "score": float(v)}
                                     for v, i in zip(vals.tolist(), ids.tolist())]
    return {"seed_tokens": seed_ids, "seed_roles": [d["role"] for d in details], "seed_tokens_by_source": by_source,
            "seed_token_details": details, "seed_blocks": [f"{kind}{idx}" for kind, idx, _, _ in blocks],
            "per_block_tokens": per_block,
            "excluded_tokens": {"special": excluded, "padding_rows": [n_tok, cfg.vocab_rows]}}


def _seed_details(pair, blocks, vecs, widths, seed_ids, top_vals, best_block) -> list[dict]:
    """Per seed token: its best block, role, and the direction with the largest weighted cosine."""
    from ..core.reference import rms_norm

    n_top = rms_norm(pair.dormant, pair.dormant.embed[torch.tensor(seed_ids, dtype=torch.long)])
    n_top = n_top / n_top.norm(dim=1, keepdim=True).clamp(min=1e-30)
    cos_top = (n_top @ vecs).split(widths, 1)
    details = []
    for row, (tid, val) in enumerate(zip(seed_ids, top_vals)):
        bi = int(best_block[tid])
        kind, idx, s, _ = blocks[bi]
        di = cosine = None
        if kind != "kq":  # kq blocks rank keys by projection, not by an embedding cosine
            c = cos_top[bi][row]
            di = int((c * s / s[0].clamp(min=1e-30)).abs().argmax())
            cosine = float(c[di])
        details.append({"id": tid, **_token_repr(pair.tokenizer, tid), "score": val, "block": f"{kind}{idx}",
                        "role": "query" if kind == "q" else "key", "direction": di, "cosine": cosine})
    return details


def _bias_template(pair, n_offsets: int) -> dict:
    """The bias-only dS template [H, offsets], per head its strongest offsets, and the top 10 overall."""
    from ..core.reference import bias_baseline

    cfg = pair.config
    H = cfg.num_heads
    n_off = max(1, min(n_offsets, cfg.max_positions))
    template = bias_baseline(pair.base, pair.dormant, torch.arange(H), n_off)  # [H, R]
    per_head = []
    for h in range(H):
        vals, offs = template[h].abs().topk(min(5, n_off))
        per_head.append({"head": h, "max_abs": float(vals[0]),
                         "strongest": [{"offset": int(o), "value": float(template[h, o])} for o in offs.tolist()]})
    flat_vals, flat_idx = template.abs().reshape(-1).topk(min(10, template.numel()))
    strongest = [{"head": int(i) // n_off, "offset": int(i) % n_off, "value": float(template.reshape(-1)[i])}
                 for i in flat_idx.tolist()]
    return {"n_offsets": n_off, "values": [[_r(v, 5) for v in row] for row in template.tolist()],
            "per_head": per_head, "strongest": strongest}


def _embedding_changes(pair, embed_rows: dict) -> dict:
    """The 20 real-token embedding rows that changed most (specials flagged), and the padding rows."""
    n_tok = pair.n_tokens
    if "delta" not in embed_rows:
        return {"embedding_changes": [], "embedding_padding_rows": None}
    rd, rb = embed_rows["delta"][:n_tok], embed_rows["base"][:n_tok]
    vals, ids = rd.topk(min(20, n_tok))
    emb = [{"id": int(i), **_token_repr(pair.tokenizer, int(i)), "delta_norm": v,
            "rel_norm": v / float(rb[i]) if float(rb[i]) > 0 else None, "special": int(i) in pair.special_ids}
           for v, i in zip(vals.tolist(), ids.tolist())]
    pad = embed_rows["delta"][n_tok:]
    return {"embedding_changes": emb,
            "embedding_padding_rows": {"rows": int(pad.numel()), "max_delta_norm": float(pad.max()) if pad.numel() else None}}


# --------------------------------------------------------------------------------------------
# Plots and summary


def _plots(result: dict, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    layers = result["layers"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    labels = [g["layer"] for g in layers]
    axes[0].bar(range(len(layers)), [g["delta_norm"] for g in layers], color="#4c72b0")
    axes[0].set_xticks(range(len(layers)), labels, rotation=90 if len(labels) > 12 else 0)
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("||delta||_F (all tensors of the layer)")
    axes[0].set_title("delta norm per layer")
    order = {g["layer"]: i for i, g in enumerate(layers)}
    modules = sorted({t["module"] for t in result["tensors"] if t["svd"]})
    cmap = plt.get_cmap("tab10")
    for mi, mod in enumerate(modules):
        pts = [(order[t["layer"]], t["svd"]["top16_energy"]) for t in result["tensors"]
               if t["svd"] and t["module"] == mod]
        axes[1].plot(*zip(*pts), "o-" if len(pts) > 1 else "o", color=cmap(mi % 10), label=mod, ms=4)
    axes[1].set_xticks(range(len(layers)), labels, rotation=90 if len(labels) > 12 else 0)
    axes[1].set_xlabel("layer")
    axes[1].set_ylabel("top-16 energy share of the delta")
    axes[1].set_title("low-rank concentration of 2-D deltas")
    if modules:  # none with layer0_only (no whole-tensor spectra)
        axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths["delta_norms"] = "delta_norms.png"
    fig.savefig(out / paths["delta_norms"], dpi=110)
    plt.close(fig)

    l0 = result["layer0"]
    focus = set(l0["focus_heads"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for r in sorted(l0["heads"], key=lambda r: r["head"]):
        s = r["q_singular_values"]
        hl = r["head"] in focus
        axes[0].semilogy(range(1, len(s) + 1), s, color="#c44e52" if hl else "0.6", lw=1.6 if hl else 0.7,
                         label=f"head {r['head']} (focus)" if hl else None, zorder=3 if hl else 1)
    axes[0].set_title("Layer-0 q_proj delta: singular values per query head")
    axes[0].set_xlabel("index")
    axes[0].set_ylabel("singular value")
    if focus:
        axes[0].legend(fontsize=7)
    focus_kv = set(l0["focus_kv_heads"])
    for r in l0["kv_heads"]:
        s = r["singular_values"]
        hl = r["kv_head"] in focus_kv
        axes[1].semilogy(range(1, len(s) + 1), s, color="#c44e52" if hl else "0.5", lw=1.6 if hl else 0.8,
                         label=f"kv head {r['kv_head']}" + (" (seed block)" if hl else ""))
    axes[1].set_title("Layer-0 k_proj delta: singular values per kv head")
    axes[1].set_xlabel("index")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    paths["head_spectra"] = "head_spectra.png"
    fig.savefig(out / paths["head_spectra"], dpi=110)
    plt.close(fig)

    bt = l0["bias_template"]
    vals = torch.tensor(bt["values"])
    lim = float(vals.abs().max()) or 1.0
    fig, ax = plt.subplots(figsize=(min(16, 4 + bt["n_offsets"] / 12), 1.2 + 0.25 * vals.shape[0]))
    im = ax.imshow(vals.numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xlabel("relative offset i - j")
    ax.set_ylabel("head")
    ax.set_title("bias-only dS template (q/k bias deltas with RoPE)")
    fig.colorbar(im, ax=ax, label="dS")
    fig.tight_layout()
    paths["bias_template"] = "bias_template.png"
    fig.savefig(out / paths["bias_template"], dpi=110)
    plt.close(fig)
    return paths


def _fmt(v, spec=".4g"):
    return "-" if v is None else format(v, spec)


def _md_token(t: dict) -> str:
    text = t.get("text")
    return "-" if text is None else "`" + repr(text)[1:-1].replace("`", "\\`").replace("|", "\\|") + "`"


def _base_check_lines(result: dict) -> list[str]:
    bc = result.get("base_check")
    if not bc:
        return []
    lines = [f"**Base check:** {bc['verdict']}; first changed: {bc['first_changed'] or 'nothing'} "
             f"([base-check.md](base-check.md))  "]
    if result.get("layer0_zero_by_construction"):
        lines += ["", f"> {result['layer0_zero_by_construction']}", ""]
    return lines


def _summary_md(result: dict) -> str:
    l0 = result["layer0"]
    lines = [
        "# Weight-diff analysis",
        "",
        f"- base: `{result['base']}`",
        f"- dormant: `{result['dormant']}`",
        f"- {len(result['tensors'])} tensors, {result['n_changed']} changed; "
        f"{result['seconds']:.1f} s; SVD methods: "
        + ", ".join(f"{k} x{v}" for k, v in sorted(result["svd_methods"].items())),
        "",
        *_base_check_lines(result),
        f"**Focus heads:** {l0['focus_heads']}  ",
        f"**Seed tokens (top {min(16, len(result['seed_tokens']))}):** {result['seed_tokens'][:16]}",
        "",
        "## Most concentrated 2-D deltas",
        "",
        "| parameter | shape | ‖Δ‖ | ‖Δ‖/‖W‖ | σ1 | top-16 energy | rank90 | eff. rank | method |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    two_d = sorted((t for t in result["tensors"] if t["svd"]), key=lambda t: -(t["svd"]["top16_energy"] or 0))
    for t in two_d[:20]:
        s = t["svd"]
        est = "" if s["exact"] else "~"
        lines.append(f"| {t['name']} | {'x'.join(map(str, t['shape']))} | {t['delta_norm']:.4g} | {_fmt(t['rel_norm'])} | "
                     f"{s['sigma1']:.4g} | {100 * s['top16_energy']:.1f}% | {est}{s['rank90']} | "
                     f"{est}{s['effective_rank']:.0f} | {s['method']} |")
    lines += ["", "(~ = estimated: randomized top singular values plus a flat tail)", "",
              "## Delta norm per layer", "", "| layer | ‖Δ‖ | ‖Δ‖/‖W‖ | tensors | most concentrated |",
              "|---|---:|---:|---:|---|"]
    for g in result["layers"]:
        conc = "-" if g["max_top16_energy"] is None else f"{g['max_top16_tensor']} ({100 * g['max_top16_energy']:.1f}%)"
        lines.append(f"| {g['layer']} | {g['delta_norm']:.4g} | {_fmt(g['rel_norm'])} | {g['n_tensors']} | {conc} |")
    lines += ["", "## Layer-0 heads", "", l0["focus_rule"] + ".", "",
              "| rank | head | kv | score | q σ1 | q top-16 | q spike | k σ1 | k spike | ‖Δbq‖ | ‖Δbk‖ |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in l0["heads"]:
        mark = " **focus**" if r["head"] in l0["focus_heads"] else ""
        lines.append(f"| {r['rank']} | {r['head']}{mark} | {r['kv_head']} | {r['score']:.4g} | {r['q_sigma1']:.4g} | "
                     f"{100 * r['q_top16_energy']:.1f}% | {r['q_spike']:.3g} | {r['k_sigma1']:.4g} | {r['k_spike']:.3g} | "
                     f"{r['q_bias_delta_norm']:.4g} | {r['k_bias_delta_norm']:.4g} |")
    lines += ["", "## Seed tokens", "",
              "Tokens whose RMS-normed dormant embedding aligns with the top right-singular vectors of the focus "
              f"heads' q_proj blocks (query role) and their kv heads' k_proj blocks (key role): blocks "
              f"{', '.join(l0['seed_blocks'])}. Score = sqrt(sum_i (sigma_i/sigma_1 * cos_i)^2) over the top "
              f"directions; specials and padding rows excluded. Blocks kq<h> (key role): tokens whose dormant keys "
              "the changed queries of focus head h point at, offsets 1.."
              f"{max(l0.get('key_offsets') or [0])} back (weighted norm of the centred key projections on "
              "the rotated left singular vectors, relative to the vocabulary's largest).", "",
              "| rank | id | token | score | block | role | cosine |", "|---:|---:|---|---:|---|---|---:|"]
    for rank, t in enumerate(l0["seed_token_details"][:30], 1):
        lines.append(f"| {rank} | {t['id']} | {_md_token(t)} | {t['score']:.4f} | {t['block']} | {t['role']} | {_fmt(t['cosine'], '+.4f')} |")
    bt = l0["bias_template"]
    lines += ["", "## Bias-only dS template", "",
              f"dS of the q/k bias deltas alone (RoPE applied) per head and relative offset 0..{bt['n_offsets'] - 1} "
              "(what `baseline=\"bias\"` subtracts). Strongest cells:", "",
              "| head | offset | dS |", "|---:|---:|---:|"]
    for c in bt["strongest"]:
        lines.append(f"| {c['head']} | {c['offset']} | {c['value']:+.4g} |")
    lines += ["", "Strongest offsets per head: " + "; ".join(
        f"h{p['head']}: " + ", ".join(f"{s['offset']} ({s['value']:+.3g})" for s in p["strongest"][:3])
        for p in bt["per_head"])]
    lines += ["", "## Embedding rows that changed most", "", "| id | token | ‖Δe‖ | ‖Δe‖/‖e‖ | special |",
              "|---:|---|---:|---:|---|"]
    for t in l0["embedding_changes"]:
        lines.append(f"| {t['id']} | {_md_token(t)} | {t['delta_norm']:.4g} | {_fmt(t['rel_norm'])} | "
                     f"{'yes' if t['special'] else ''} |")
    pad = l0.get("embedding_padding_rows")
    if pad and pad["rows"]:
        lines.append(f"\nPadding rows (beyond the tokenizer, {pad['rows']} rows): max ‖Δe‖ {pad['max_delta_norm']:.4g}.")
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in result["plots"].items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Entry points


def analyze(base, dormant, out_dir, *, top_tokens: int = 64, n_focus: int | None = None, directions: int = 4,
            offsets: int = 128, svd: str = "auto", plots: bool = True, progress: bool = True,
            key_offsets: int = 4, layer0_only: bool = False, check_base: bool = True) -> dict:
    """Weight-diff analysis of a base/dormant pair; writes analysis.json, summary.md and PNG plots.

    First the base check (analysis/base_check.py; base-check.json and base-check.md in out_dir, unless
    check_base is False): when the embeddings, Layer-0 input norm and q/k are bit-identical every
    Layer-0 score is zero by construction, so no focus heads or seed tokens are named (they would rank
    noise) and `layer0_zero_by_construction` says why.

    base, dormant: model directories or cached hub ids. top_tokens: length of `seed_tokens`.
    n_focus: number of focus heads (default: chosen at the largest score gap). directions: top
    right-singular vectors per block used for token alignment. offsets: relative offsets of the
    bias-only template. svd: "auto" (full spectrum where affordable, randomized for the largest
    tensors), "full" (never randomized) or "randomized" (every tensor with rank > 128).
    key_offsets: key-role seeds look at offsets 1..key_offsets behind the changed queries.
    layer0_only: pass 1 reads only the tensors pass 2 needs (embedding, Layer-0 input norm, q/k
    weights and biases) and computes their norms but no whole-tensor spectra (seconds instead of
    minutes on a full checkpoint; the per-head spectra of pass 2 are unchanged).
    Returns the analysis.json content; `focus_heads` and `seed_tokens` are ranked lists of ints,
    `seed_roles` the role ("query" or "key") each seed token was found in.
    """
    from ..core.model_pair import ModelPair

    if svd not in SVD_MODES:
        raise ValueError(f"svd must be one of {SVD_MODES}, got {svd!r}")
    if top_tokens < 1 or directions < 1 or offsets < 1 or key_offsets < 1:
        raise ValueError("top_tokens, directions, offsets and key_offsets must be positive")
    start = time.perf_counter()
    base_dir, dormant_dir = resolve_model_dir(base), resolve_model_dir(dormant)
    entries_b, entries_d = _pair_entries(base_dir, dormant_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check = _base_check_first(base_dir, dormant_dir, out) if check_base else None

    names = sorted(entries_b, key=_sort_key)
    if layer0_only:  # what pass 2 reads; norms only (the per-head spectra come from pass 2)
        names = [n for n in names if n in LAYER0_KEYS.values()]
    embed_rows: dict = {}
    tensors = []
    bar = tqdm(names, desc="tensor deltas", unit="tensor", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name, refresh=False)
        tensors.append(_tensor_stats(name, entries_b[name], entries_d[name], None if layer0_only else svd,
                                     embed_rows if name == LAYER0_KEYS["embed"] else None))
    bar.close()

    pair = ModelPair.load(base_dir, dormant_dir)
    layer0 = _layer0_analysis(pair, n_focus, top_tokens, directions, offsets, embed_rows, progress,
                              tuple(range(1, key_offsets + 1)))
    if check is not None and check.layer0_scores_zero:
        layer0 = _zero_layer0(layer0)
    cfg = pair.config
    del pair, embed_rows

    methods: dict[str, int] = {}
    for t in tensors:
        if t["svd"]:
            methods[t["svd"]["method"]] = methods.get(t["svd"]["method"], 0) + 1
    result = {
        "version": 1,
        "base": str(base_dir),
        "dormant": str(dormant_dir),
        "config": {"hidden_size": cfg.hidden_size, "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads,
                   "head_dim": cfg.head_dim, "vocab_rows": cfg.vocab_rows, "rope_theta": cfg.rope_theta},
        "base_check": _base_check_summary(check),
        "layer0_zero_by_construction": layer0.get("zero_by_construction"),
        "focus_heads": layer0["focus_heads"],
        "seed_tokens": layer0["seed_tokens"],
        "seed_roles": layer0["seed_roles"],
        "seed_tokens_by_source": layer0["seed_tokens_by_source"],
        "layer0_only": layer0_only,
        "n_changed": sum(t["delta_norm"] > 0 for t in tensors),
        "svd_methods": methods,
        "svd_settings": {"mode": svd, "randomized_rank": RANDOMIZED_RANK, "randomized_niter": RANDOMIZED_NITER,
                         "svdvals_max_cost": SVDVALS_MAX_COST, "gram_max_flops": GRAM_MAX_FLOPS},
        "layers": _layer_table(tensors),
        "tensors": tensors,
        "layer0": layer0,
        "plots": {},
    }
    if plots:
        result["plots"] = _plots(result, out)
    result["seconds"] = time.perf_counter() - start
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    (out / "summary.md").write_text(_summary_md(result))
    return result


def _base_check_first(base_dir: Path, dormant_dir: Path, out: Path):
    """The base check of this pair, written next to the analysis; its candidate."""
    from .base_check import base_check, write_base_check

    result = base_check(dormant_dir, [base_dir])
    write_base_check(result, out)
    return result.chosen


def _base_check_summary(check) -> dict | None:
    if check is None:
        return None
    fc = check.first_changed
    return {"verdict": check.verdict, "first_changed": fc.label if fc else None, "evidence": check.evidence,
            "layer0_scores_zero": check.layer0_scores_zero, "file": "base-check.json"}


def _zero_layer0(layer0: dict) -> dict:
    """Layer 0 when its scores are zero by construction: the per-head table stays (all zeros), but no
    focus heads or seed tokens are named."""
    from .base_check import LAYER0_ZERO_NOTE

    return {**layer0, "focus_heads": [], "focus_kv_heads": [], "focus_rule": LAYER0_ZERO_NOTE, "seed_tokens": [],
            "seed_roles": [], "seed_token_details": [], "zero_by_construction": LAYER0_ZERO_NOTE,
            "seed_tokens_by_source": {k: [] for k in layer0["seed_tokens_by_source"]}}


def _no_seeds_reason(p, data) -> None:
    """A clear error for an analysis whose Layer-0 scores are zero by construction (no seed tokens)."""
    if isinstance(data, dict) and data.get("layer0_zero_by_construction") and not data.get("seed_tokens"):
        raise ValueError(f"{p}: no seed tokens: {data['layer0_zero_by_construction']}")


def _read_analysis_file(path):
    p = Path(path)
    if p.is_dir():
        p = p / "analysis.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file (expected the analysis.json written by `l0score analyze`)")
    try:
        return p, json.loads(p.read_text())
    except ValueError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None


def _check_ids(p, name: str, values, allow_empty: bool = False) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{p}: expected '{name}' as a list of non-negative integer ids")
    if not values and not allow_empty:
        raise ValueError(f"{p}: '{name}' is empty")
    return list(values)


def load_seed_tokens(path) -> list[int]:
    """Ranked seed token ids from an analysis.json (or a directory holding one, or a JSON list)."""
    p, data = _read_analysis_file(path)
    _no_seeds_reason(p, data)
    return _check_ids(p, "seed_tokens", data.get("seed_tokens") if isinstance(data, dict) else data)


def load_focus_heads(path) -> list[int]:
    """The focus heads of an analysis.json (or the directory holding one)."""
    return read_analysis(path)["focus_heads"]


def read_analysis(analysis) -> dict:
    """focus_heads, seed_tokens and seed_roles ("query"/"key" per seed token) of an analysis: the
    analysis.json content, its path, or the directory holding it."""
    p, data = ("analysis", analysis) if isinstance(analysis, dict) else _read_analysis_file(analysis)
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected the analysis.json object written by `l0score analyze`")
    _no_seeds_reason(p, data)
    seeds = _check_ids(p, "seed_tokens", data.get("seed_tokens"))
    heads = _check_ids(p, "focus_heads", data.get("focus_heads"), allow_empty=True)
    roles = data.get("seed_roles") or [None] * len(seeds)
    if len(roles) != len(seeds):
        raise ValueError(f"{p}: 'seed_roles' has {len(roles)} entries for {len(seeds)} seed tokens")
    return {"focus_heads": heads, "seed_tokens": seeds, "seed_roles": list(roles)}
