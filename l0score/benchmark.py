"""`l0score bench`: every scorer side by side on one machine, in one run.

Setting (ANCHORS.md): a Qwen2-7B-shaped pair (default: the synthetic qwen2-7b-l0 pair, made under the
cache directory if missing), a ~30-token chat prefix, 8 random real tokens per candidate, the
template's suffix, all heads, metrics max_abs + kl (region "candidate").

Measured in the same run:
  * the machine's ceilings (l0score.machine): the theoretical peak from the CPU's vector width, FMA
    pipes, clock and cores; the measured FMA peak of the native micro-kernel (the roofline: every
    rate below is also given as a fraction of it); torch.mm of 4096^2 float32 matrices (sgemm);
  * native token-table scorer, fp32 and bf16 tables: candidates/s through Scorer.score_batch
    (each in its own process, so its peak RSS and its cached-table load time are its own);
  * native table build time per model (fresh build, then stored in the disk cache);
  * torch reference with the context cache (per-token table, only dependent rows);
  * transformers' Qwen2 Layer-0 modules of both models recomputed for every candidate, batched 32
    (what a user would otherwise write);
  * Triton under TRITON_INTERPRET=1 on the tiny pair: correctness only;
  * native pair scan (search pairs): one (head, offset) over a 20,000-token pool, the C++ kernel
    against pairs.py's torch code (BLAS GEMM blocks + running top-k) on the same table;
  * native incremental extensions (Scorer.score_extensions, one step of a beam search): for cached
    candidate prefixes of 0, 2, 4 and 7 tokens, prefix + [t] for every token t of the default pool,
    fp32 and bf16 tables, in the model's own chat template (its default system prompt) and in the
    ~30-token prefix above; score_batch of 8-token candidates in the same process for the ratio.
Useful work per candidate = the dot products of every cell that depends on the candidate, both
models (6.9 MFLOP at p=30, c=8, s=5, 28 heads, D=128); per extension, those of the new token's row
and the suffix rows; per pair-scan cell, the two D-long dot products. Useful GFLOP/s is compared
with the measured FMA peak (docs/benchmark.md says what bounds each path below it).

The machine may be shared: the load average is recorded before and after, and every native run also
reports its CPU time per candidate (wall-clock throughput is what the ratios use).
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .machine import ceilings, fma_peak
from .synthetic.cached import default_pair

RESULT_TAG = "L0BENCH_RESULT "
CHAT_SYSTEM = "You are a helpful assistant. Answer briefly and accurately."
CHAT_BEFORE = ("", "Q:", "Q: ", "Text: ", "Please read: ")
TARGETS = {"native_fp32_cand_per_s": 20_000, "roofline_fraction": 0.5, "vs_transformers": 200,
           "build_s_per_model": 120, "cached_load_s": 10, "rss_gb_fp32": 12, "rss_gb_bf16": 7,
           "native_fp32_extensions_per_s": 300_000}  # default chat template (search's --template chat)
EXTENSION_PREFIXES = (0, 2, 4, 7)  # cached candidate tokens before the extended position


# -- helpers -----------------------------------------------------------------------------------

def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def chat_template(tokenizer, target_prefix: int = 30):
    """The model's chat template with a system prompt; the user text before the candidate is chosen so
    the prefix is as close to target_prefix tokens as possible."""
    from .core.template import Template

    options = [Template.chat(tokenizer, system=CHAT_SYSTEM, before=b) for b in CHAT_BEFORE]
    return min(options, key=lambda t: (abs(len(t.prefix_ids) - target_prefix), len(t.prefix_ids)))


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def bench_template(tokenizer, target_prefix: int = 30):
    """The setting's template: the ~30-token chat prefix, or the raw template when the tokenizer has
    no chat template (the rows that use it then say so: `NO_CHAT_NOTE`)."""
    from .core.template import Template

    return chat_template(tokenizer, target_prefix) if has_chat_template(tokenizer) else Template.raw()


NO_CHAT_NOTE = ("the pair's tokenizer has no chat template: {rows} ran in the raw template (empty prefix and "
                "suffix) instead of the chat template")


def candidates(pair, n: int, length: int, seed: int = 0) -> np.ndarray:
    """Random real, non-special tokens: [n, length] int64 (the worst case: no shared rows)."""
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.arange(pair.n_tokens), np.array(sorted(pair.special_ids), dtype=np.int64))
    return rng.choice(pool, size=(n, length)).astype(np.int64)


def useful_flops(head_dim: int, n_heads: int, p: int, c: int, s: int) -> float:
    """Dot-product FLOPs of the cells that depend on the candidate, both models: every causal cell
    of the c + s dependent rows (their softmax depends on the candidate)."""
    cells = sum(p + t + 1 for t in range(c + s))
    return 2.0 * n_heads * cells * 2 * head_dim


def candidate_flops(head_dim: int, n_heads: int, p: int, c: int, s: int) -> float:
    """The part of `useful_flops` that differs between candidates of one length, both models: the c
    candidate rows (prefix and candidate keys) and the suffix rows' cells against candidate keys.
    The suffix rows' cells against prefix and suffix keys are the same for every candidate of that
    length, and the native kernel reduces them once per batch (score.cpp), so they are not counted."""
    cells = sum(p + t + 1 for t in range(c)) + s * c
    return 2.0 * n_heads * cells * 2 * head_dim


def extension_flops(head_dim: int, n_heads: int, p: int, c: int, s: int) -> float:
    """Dot-product FLOPs that differ between the extensions prefix[:c] + [t] of one call, both models:
    the new token's row (p + c + 1 cells) and each suffix row's cell against t (s cells). The suffix
    rows' other cells sit at the same relative offsets for every t, so they are shared by the call."""
    return 2.0 * n_heads * (p + c + 1 + s) * 2 * head_dim


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- children (one process per native configuration) ------------------------------------------

def _child_build(spec: dict) -> dict:
    """Fresh native table build of both models in one dtype (timed per model), then cached."""
    from .backends import native as native_backend, table_cache
    from .core.model_pair import ModelPair

    t = time.perf_counter()
    pair = ModelPair.load(spec["base"], spec["dormant"])
    load_s = time.perf_counter() - t
    out = {"pair_load_s": load_s, "build_s": {}, "saved": {}}
    cfg = pair.config
    flops = 2.0 * cfg.vocab_rows * cfg.hidden_size * (cfg.num_heads + cfg.num_kv_heads) * cfg.head_dim
    for role, w in (("base", pair.base), ("dormant", pair.dormant)):
        t = time.perf_counter()
        q, k = native_backend.build_table(w, spec["dtype"], progress=spec.get("progress", True))
        dt = time.perf_counter() - t
        out["build_s"][role] = dt
        out.setdefault("build_gflops", {})[role] = flops / dt / 1e9
        path = table_cache.save(w, spec["dtype"], q, k)
        out["saved"][role] = str(path) if path else None
        del q, k
    out["rss_gb"] = peak_rss_gb()
    return out


def _child_native(spec: dict) -> dict:
    """Load the pair and the cached table, then time Scorer.score_batch on the benchmark batch."""
    from . import Scorer, _native
    from .core.model_pair import ModelPair

    t = time.perf_counter()
    pair = ModelPair.load(spec["base"], spec["dormant"])
    pair_load_s = time.perf_counter() - t
    tpl = bench_template(pair.tokenizer, spec["prefix"])
    t = time.perf_counter()
    scorer = Scorer(pair, backend="native", table=True, table_dtype=spec["dtype"], template=tpl)
    table_s = time.perf_counter() - t
    info = {r: {"source": i.source, "seconds": i.seconds} for r, i in scorer.backend.table_info.items()}
    cands = candidates(pair, spec["n"], spec["length"], seed=spec["seed"])
    scorer.score_batch(cands[: min(2048, len(cands))])  # warm-up: page in, thread pool
    peak = fma_peak()  # the roofline, under the same conditions
    walls, cpus = [], []
    for _ in range(spec["reps"]):
        c0, t = time.process_time(), time.perf_counter()
        scores = scorer.score_batch(cands)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c0)
    rates = [len(cands) / w for w in walls]
    keep = min(len(cands), 64)
    return {
        "dtype": spec["dtype"], "threads": _native.num_threads(), "n": len(cands), "reps": spec["reps"],
        "cand_per_s": statistics.median(rates), "cand_per_s_all": rates,
        "cpu_us_per_cand": 1e6 * statistics.median(cpus) / len(cands),
        "pair_load_s": pair_load_s, "table_setup_s": table_s, "table": info,
        "rss_gb": peak_rss_gb(), "template": tpl.name, "prefix_len": len(tpl.prefix_ids),
        "suffix_len": len(tpl.suffix_ids),
        "fma_gflops": peak,
        "sample": {"max_abs": scores.max_abs[:keep].tolist(), "kl": scores.kl[:keep].tolist()},
    }


def _child_extensions(spec: dict) -> dict:
    """Time Scorer.score_extensions over the default pool (a beam step), and score_batch of 8-token
    candidates in the same process, per template: the chat template's default and the ~30-token one."""
    from . import Scorer
    from .core.model_pair import ModelPair
    from .core.template import Template

    pair = ModelPair.load(spec["base"], spec["dormant"])
    if has_chat_template(pair.tokenizer):
        templates = {"chat": Template.chat(pair.tokenizer), "chat30": chat_template(pair.tokenizer, spec["prefix"])}
    else:  # the two chat rows become one raw row (NO_CHAT_NOTE)
        templates = {"raw": Template.raw()}
    scorer = Scorer(pair, backend="native", table=True, table_dtype=spec["dtype"], template=next(iter(templates.values())))
    pool = scorer.default_pool()
    rng = np.random.default_rng(spec["seed"])
    cands = candidates(pair, spec["n_batch"], spec["length"], seed=spec["seed"])
    out = {"dtype": spec["dtype"], "pool": len(pool), "reps": spec["reps"], "templates": {}, "fma_gflops": fma_peak()}
    for name, tpl in templates.items():
        prefixes = {c: rng.choice(pool.numpy(), c).tolist() for c in EXTENSION_PREFIXES}
        scorer.score_extensions([prefixes[0]], pool, template=tpl)  # warm-up: context, page-in
        walls = {c: [] for c in prefixes}
        batch, cpu = [], {"extensions": 0.0, "batch": 0.0}  # process-CPU seconds: the work, whatever the load
        for _ in range(spec["reps"]):
            for c, prefix in prefixes.items():
                t, c0 = time.perf_counter(), time.process_time()
                scorer.score_extensions([prefix], pool, template=tpl)
                walls[c].append(time.perf_counter() - t)
                cpu["extensions"] += time.process_time() - c0
            t, c0 = time.perf_counter(), time.process_time()
            scorer.score_batch(cands, template=tpl)
            batch.append(time.perf_counter() - t)
            cpu["batch"] += time.process_time() - c0
        per_prefix = {c: len(pool) / statistics.median(w) for c, w in walls.items()}
        step = len(pool) * len(prefixes) / sum(statistics.median(w) for w in walls.values())
        batch_rate = len(cands) / statistics.median(batch)
        cfg, p, s = pair.config, len(tpl.prefix_ids), len(tpl.suffix_ids)
        flops = sum(len(pool) * extension_flops(cfg.head_dim, cfg.num_heads, p, c, s) for c in prefixes)
        out["templates"][name] = {"prefix_len": p, "suffix_len": s,
                                  "ext_per_s": step, "ext_per_s_by_prefix": per_prefix,
                                  "useful_gflops": flops / sum(statistics.median(w) for w in walls.values()) / 1e9,
                                  "ext_per_s_all": {c: [len(pool) / x for x in w] for c, w in walls.items()},
                                  "batch_cand_per_s": batch_rate, "ext_vs_batch": step / batch_rate,
                                  "ext_per_cpu_s": len(pool) * len(prefixes) * spec["reps"] / cpu["extensions"],
                                  "batch_cand_per_cpu_s": len(cands) * spec["reps"] / cpu["batch"]}
    return out


def _child_pairs(spec: dict) -> dict:
    """One (head, offset) of the exact pair scan over a pool: native kernel vs the torch path."""
    from . import Scorer
    from .search import pair_scan

    head = spec["head"]
    scorer = Scorer.from_pretrained(spec["base"], spec["dormant"], backend="native", template="raw", heads=[head])
    pool = scorer.default_pool()[: spec["pool"]]
    n, d = len(pool), scorer.pair.config.head_dim
    t = time.perf_counter()
    values, _, _ = scorer.backend.pair_topk(pool, head, 1, 100, 0.0)
    native_s = time.perf_counter() - t
    t = time.perf_counter()
    want = pair_scan(scorer, pool, offsets=(1,), top=100, progress=False, use_kernel=False)  # same table
    torch_s = time.perf_counter() - t
    return {"pool": n, "head": head, "native_s": native_s, "torch_s": torch_s,
            "native_gflops": 4.0 * d * n * n / native_s / 1e9, "cells_per_s": n * n / native_s,
            "full_vocab_s_per_head_offset": scorer.pair.n_tokens ** 2 / (n * n / native_s),
            "same_best": abs(float(values.abs()[0]) - want["top"][0]["abs"]) <= 1e-5 * want["top"][0]["abs"]}


def _child_triton(spec: dict) -> dict:
    """Triton interpreted (TRITON_INTERPRET=1) on the tiny pair: agreement with the torch reference."""
    from . import Scorer
    from .core.model_pair import ModelPair

    pair = ModelPair.load(spec["base"], spec["dormant"])
    tpl = bench_template(pair.tokenizer, spec["prefix"])
    cands = candidates(pair, spec["n"], spec["length"], seed=spec["seed"])
    ref = Scorer(pair, backend="torch", template=tpl).score_batch(cands)
    t = time.perf_counter()
    got = Scorer(pair, backend="triton", template=tpl).score_batch(cands)
    dt = time.perf_counter() - t
    err = lambda a, b: float(((a - b).abs() / b.abs().clamp(min=1e-6)).max())
    return {"n": len(cands), "seconds_interpreted": dt, "max_rel_err_max_abs": err(got.max_abs, ref.max_abs),
            "max_rel_err_kl": err(got.kl, ref.kl), "argmax_equal": bool(torch.equal(got.argmax, ref.argmax))}


def _run_child(kind: str, spec: dict, env: dict | None = None, timeout: float = 7200) -> dict:
    cmd = [sys.executable, "-m", "l0score.cli.bench", "--_child", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return {"error": f"child {kind} exited with {proc.returncode}", "stdout": proc.stdout[-2000:]}


# -- in-process baselines ------------------------------------------------------------------------

def _torch_reference(pair, table, tpl, cands: np.ndarray) -> dict:
    """Reference backend on the per-token table with the context cache (only dependent rows)."""
    from . import Scorer
    from .backends.torch import TorchBackend

    scorer = Scorer(pair, backend="torch", table=False, template=tpl)
    scorer.backend, scorer.table = TorchBackend(table.lookup, pair.config), table  # share the loaded table
    scorer._contexts.clear()
    scorer.context(tpl)
    scorer.score_batch(cands[:64])
    t = time.perf_counter()
    scores = scorer.score_batch(cands)
    dt = time.perf_counter() - t
    return {"n": len(cands), "seconds": dt, "cand_per_s": len(cands) / dt,
            "sample": {"max_abs": scores.max_abs[:64].tolist(), "kl": scores.kl[:64].tolist()}}


class _HFLayer0(torch.nn.Module):
    """transformers' own Qwen2 Layer-0 modules (embedding, input RMSNorm, q/k projections, rotary) in float32."""

    def __init__(self, weights, hf_config):
        super().__init__()
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, Qwen2RotaryEmbedding

        cfg = weights.config
        self.embed = torch.nn.Embedding.from_pretrained(weights.embed.float(), freeze=True)
        self.norm = Qwen2RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.norm.weight.data = weights.norm.float()
        self.q_proj = torch.nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim)
        self.k_proj = torch.nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim)
        self.q_proj.weight.data, self.q_proj.bias.data = weights.wq.float(), weights.bq.float()
        self.k_proj.weight.data, self.k_proj.bias.data = weights.wk.float(), weights.bk.float()
        self.rotary = Qwen2RotaryEmbedding(config=hf_config)
        self.cfg = cfg

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

        b, t = ids.shape
        cfg = self.cfg
        h = self.norm(self.embed(ids))
        q = self.q_proj(h).view(b, t, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        cos, sin = self.rotary(h, torch.arange(t)[None].expand(b, -1))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = repeat_kv(k, cfg.group)
        return torch.matmul(q, k.transpose(2, 3)) / math.sqrt(cfg.head_dim)  # [b, H, t, t]


def _transformers_baseline(pair, tpl, cands: np.ndarray, batch: int = 32) -> dict:
    """Both models' Layer-0 modules recomputed for every candidate's full sequence, batched."""
    from transformers import AutoConfig

    from .core.reference import row_kl

    hf_cfg = AutoConfig.from_pretrained(pair.base.path, local_files_only=True)
    models = [_HFLayer0(w, hf_cfg).eval() for w in (pair.base, pair.dormant)]
    p, c, s = len(tpl.prefix_ids), cands.shape[1], len(tpl.suffix_ids)
    seq = np.concatenate([np.tile(tpl.prefix_ids, (len(cands), 1)), cands, np.tile(tpl.suffix_ids, (len(cands), 1))], 1)
    seq = torch.from_numpy(seq.astype(np.int64))
    t_len = seq.shape[1]
    causal = torch.tril(torch.ones(t_len, t_len, dtype=torch.bool))
    pos = torch.arange(t_len)
    in_c = lambda x: (x >= p) & (x < p + c)
    scored = causal & (in_c(pos)[:, None] | in_c(pos)[None, :])

    def score(ids):
        s_b, s_d = models[0](ids), models[1](ids)
        ds = (s_d - s_b).abs().masked_fill(~scored, -math.inf)
        max_abs = ds.flatten(1).amax(-1)
        # the same KL formula as every backend (from dS, docs/precision.md), so that agreement
        # figures measure the logits and not the textbook form's ~1e-3 cancellation error
        kl = row_kl(s_b, s_d, causal.expand_as(s_b))[:, :, p:].sum((-1, -2))
        return max_abs, kl

    score(seq[:batch])
    outs = []
    t = time.perf_counter()
    for start in range(0, len(seq), batch):
        outs.append(score(seq[start : start + batch]))
    dt = time.perf_counter() - t
    max_abs = torch.cat([o[0] for o in outs])
    kl = torch.cat([o[1] for o in outs])
    return {"n": len(seq), "batch": batch, "seconds": dt, "cand_per_s": len(seq) / dt,
            "sample": {"max_abs": max_abs[:64].tolist(), "kl": kl[:64].tolist()}}


def _agreement(a: dict, b: dict) -> dict:
    """Largest relative difference of the shared sample between two implementations."""
    out = {}
    for f in ("max_abs", "kl"):
        x, y = np.array(a["sample"][f]), np.array(b["sample"][f])
        n = min(len(x), len(y))
        out[f] = float(np.max(np.abs(x[:n] - y[:n]) / np.maximum(np.abs(y[:n]), 1e-6))) if n else None
    return out


# -- the benchmark ------------------------------------------------------------------------------

def run_benchmark(base=None, dormant=None, quick: bool = False, out_dir=None, n_native: int | None = None,
                  reps: int = 5, n_torch: int | None = None, n_transformers: int | None = None,
                  build: bool = True, triton: bool = True, extensions: bool = True, length: int = 8,
                  prefix: int = 30, seed: int = 0,
                  command: str | None = None) -> dict:
    """Run every measurement; write bench-<stamp>.json/.png and latest.json/.png/.md under out_dir."""
    torch.set_num_threads(os.cpu_count() or 1)
    if base is None or dormant is None:
        pair_dir = default_pair("tiny" if quick else "qwen2-7b-l0")
        base, dormant = base or pair_dir / "base", dormant or pair_dir / "dormant"
    base, dormant = str(Path(base).resolve()), str(Path(dormant).resolve())
    n_native = n_native or (2048 if quick else 16384)
    n_torch = n_torch or (256 if quick else 1024)
    n_transformers = n_transformers or (64 if quick else 256)
    if quick:
        reps = min(reps, 2)
    out_dir = Path(out_dir) if out_dir else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"stamp": time.strftime("%Y%m%d-%H%M%S"), "command": command or "run_benchmark()",
                 "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                             "loadavg_start": os.getloadavg()},
                 "pair": {"base": base, "dormant": dormant}, "targets": TARGETS, "quick": quick, "notes": []}
    spec = {"base": base, "dormant": dormant, "prefix": prefix, "length": length, "seed": seed}
    from tqdm import tqdm

    bar = tqdm(total=11, desc="bench", unit="step")
    _native_children(res, spec, bar, build=build, extensions=extensions, quick=quick, n_native=n_native, reps=reps)
    bar.set_postfix_str("ceilings")
    _ceilings(res, quick)
    bar.update(1)
    flops = _parent_baselines(res, spec, bar, extensions=extensions, n_torch=n_torch, n_transformers=n_transformers)
    bar.set_postfix_str("triton")
    if triton:
        tiny = default_pair("tiny")
        res["triton"] = _run_child("triton", {**spec, "base": str(tiny / "base"), "dormant": str(tiny / "dormant"),
                                              "n": 8}, env={"TRITON_INTERPRET": "1"})
    bar.update(1)
    bar.close()
    res["machine"]["loadavg_end"] = os.getloadavg()
    for key, row in res.items():  # a child that failed is a skipped row, with its reason
        if isinstance(row, dict) and "error" in row and key != "triton":
            res["notes"].append(f"{key} skipped: {row['error']}")
    _summarise(res, flops)
    _write(res, out_dir)
    return res


def _native_children(res: dict, spec: dict, bar, *, build: bool, extensions: bool, quick: bool, n_native: int,
                     reps: int) -> None:
    """Table builds, score_batch, extensions and the pair scan: one child process each."""
    for dtype in ("float32", "bfloat16"):
        bar.set_postfix_str(f"build {dtype}")
        if build:
            res[f"build_{dtype}"] = _run_child("build", {**spec, "dtype": dtype})
        bar.update(1)
    for dtype in ("float32", "bfloat16"):
        bar.set_postfix_str(f"native {dtype}")
        res[f"native_{dtype}"] = _run_child("native", {**spec, "dtype": dtype, "n": n_native, "reps": reps})
        bar.update(1)
    for dtype in ("float32", "bfloat16"):
        bar.set_postfix_str(f"extensions {dtype}")
        if extensions:
            res[f"extensions_{dtype}"] = _run_child("extensions", {**spec, "dtype": dtype, "reps": reps,
                                                                  "n_batch": 512 if quick else 4096})
        bar.update(1)
    bar.set_postfix_str("pairs")
    if extensions:
        res["pairs"] = _run_child("pairs", {**spec, "pool": 2000 if quick else 20000, "head": 0})
    bar.update(1)


def _ceilings(res: dict, quick: bool) -> None:
    """Theoretical peak, sgemm and the measured FMA peak. The peak is the best FMA rate seen in this
    run (here and just before each native timing): on a shared machine a low reading means
    contention, not a slower machine."""
    ceil = ceilings(sgemm_n=1024 if quick else 4096)
    rates = {"parent": ceil["fma_gflops"]}
    for key in ("native_float32", "native_bfloat16", "extensions_float32", "extensions_bfloat16"):
        if "fma_gflops" in res.get(key, {}):
            rates[key] = res[key]["fma_gflops"]
    ceil["fma_gflops_measured"] = rates
    ceil["fma_gflops"] = max(rates.values())
    ceil["sgemm_of_fma"] = ceil["sgemm_gflops"] / ceil["fma_gflops"]
    th = ceil["theoretical"]["gflops"]
    ceil["fma_of_theoretical"] = ceil["fma_gflops"] / th if th else None
    res["machine"]["ceilings"] = ceil


def _parent_baselines(res: dict, spec: dict, bar, *, extensions: bool, n_torch: int, n_transformers: int) -> float:
    """The setting, then the torch reference and transformers' modules in this process; returns the
    useful FLOPs per candidate."""
    from .backends import table_cache
    from .backends.token_table import TokenTable
    from .core.model_pair import ModelPair

    pair = ModelPair.load(spec["base"], spec["dormant"])
    tpl = bench_template(pair.tokenizer, spec["prefix"])
    if tpl.name == "raw":
        res["notes"].append(NO_CHAT_NOTE.format(rows="native fp32/bf16, torch and transformers")
                            + (", and the extension rows' two chat templates became one raw row" if extensions else ""))
    cfg, length = pair.config, spec["length"]
    p, s = len(tpl.prefix_ids), len(tpl.suffix_ids)
    flops = useful_flops(cfg.head_dim, cfg.num_heads, p, length, s)
    per_cand = candidate_flops(cfg.head_dim, cfg.num_heads, p, length, s)
    res["setting"] = {"template": tpl.name, "prefix_len": p, "candidate_len": length, "suffix_len": s,
                      "heads": cfg.num_heads, "head_dim": cfg.head_dim, "vocab_rows": cfg.vocab_rows,
                      "hidden": cfg.hidden_size, "metrics": ["max_abs", "kl"], "region": "candidate",
                      "useful_mflop_per_candidate": flops / 1e6, "candidate_mflop_per_candidate": per_cand / 1e6,
                      "checkpoint_dtype": str(pair.base.dtype).replace("torch.", "")}
    cands = candidates(pair, max(n_torch, n_transformers), length, seed=spec["seed"])

    bar.set_postfix_str("torch")
    t = time.perf_counter()
    tables = [table_cache.load(w, "float32") for w in (pair.base, pair.dormant)]
    load_s = time.perf_counter() - t
    if all(tb is not None for tb, _ in tables):
        table = TokenTable(*tables[0][0], *tables[1][0])
        res["parent_cached_fp32_load_s"] = load_s
    else:
        table = TokenTable.build(pair, "float32")
    del tables
    res["torch"] = _torch_reference(pair, table, tpl, cands[:n_torch])
    del table
    bar.update(1)

    bar.set_postfix_str("transformers")
    res["transformers"] = _transformers_baseline(pair, tpl, cands[:n_transformers])
    bar.update(1)
    return flops


def _summarise(res: dict, flops: float) -> None:
    peak = res["machine"]["ceilings"]["fma_gflops"]
    summary = {"roofline_cand_per_s": peak * 1e9 / flops, "peak_gflops": peak,
               "sgemm_of_peak": res["machine"]["ceilings"]["sgemm_of_fma"]}
    for dtype in ("float32", "bfloat16"):
        nat = res.get(f"native_{dtype}", {})
        if "cand_per_s" in nat:
            summary[dtype] = _native_summary(res, nat, flops, peak)
            build = res.get(f"build_{dtype}", {})
            if "build_s" in build:
                summary[dtype]["build_s_per_model"] = build["build_s"]
    for dtype in ("float32", "bfloat16"):
        ext = res.get(f"extensions_{dtype}", {})
        if "templates" in ext:
            summary[f"extensions_{dtype}"] = {
                name: {"prefix_len": t["prefix_len"], "ext_per_s": t["ext_per_s"], "ext_vs_batch": t["ext_vs_batch"],
                       "useful_gflops": t["useful_gflops"], "peak_fraction": t["useful_gflops"] / peak}
                for name, t in ext["templates"].items()}
    if "native_gflops" in res.get("pairs", {}):
        summary["pairs_peak_fraction"] = res["pairs"]["native_gflops"] / peak
    summary["torch_vs_transformers"] = res["torch"]["cand_per_s"] / res["transformers"]["cand_per_s"]
    summary["transformers_agreement_vs_torch"] = _agreement(res["transformers"], res["torch"])
    if summary.get("float32") and not res.get("quick"):  # the targets are for the full-size pair
        summary["targets_met"] = _targets_met(summary)
    res["summary"] = summary


def _native_summary(res: dict, nat: dict, flops: float, peak: float) -> dict:
    rate = nat["cand_per_s"]
    per_cand = res["setting"]["candidate_mflop_per_candidate"] * 1e6
    return {
        "cand_per_s": rate, "cand_per_hour": rate * 3600, "useful_gflops": rate * flops / 1e9,
        "candidate_gflops": rate * per_cand / 1e9,  # the work that is not shared across the batch
        "roofline_fraction": rate * per_cand / 1e9 / peak,  # of the measured FMA peak
        "vs_torch": rate / res["torch"]["cand_per_s"], "vs_transformers": rate / res["transformers"]["cand_per_s"],
        "cpu_bound_cand_per_s": (res["machine"]["cores"] or 1) * 1e6 / nat["cpu_us_per_cand"],
        "cached_table_load_s": max(i["seconds"] for i in nat["table"].values()),
        "table_from_cache": all(i["source"] == "cache" for i in nat["table"].values()),
        "rss_gb": nat["rss_gb"],
        "agreement_vs_torch": _agreement(nat, res["torch"]),
    }


def _targets_met(summary: dict) -> dict:
    t, f32 = TARGETS, summary["float32"]
    met = {
        "native_fp32_cand_per_s": f32["cand_per_s"] >= t["native_fp32_cand_per_s"],
        "roofline_fraction": f32["roofline_fraction"] >= t["roofline_fraction"],
        "vs_transformers": f32["vs_transformers"] >= t["vs_transformers"],
        "build_s_per_model": all(v <= t["build_s_per_model"] for v in f32.get("build_s_per_model", {"-": 0}).values()),
        "cached_load_s": f32["cached_table_load_s"] <= t["cached_load_s"],
        "rss_gb_fp32": f32["rss_gb"] <= t["rss_gb_fp32"],
        "rss_gb_bf16": summary.get("bfloat16", {}).get("rss_gb", 1e9) <= t["rss_gb_bf16"],
    }
    if "chat" in summary.get("extensions_float32", {}):  # the target is in the default chat template
        met["native_fp32_extensions_per_s"] = summary["extensions_float32"]["chat"]["ext_per_s"] >= t[
            "native_fp32_extensions_per_s"]
    return met


def default_out_dir() -> Path:
    repo = Path(__file__).resolve().parents[1]
    return repo / "bench" / "results" if (repo / "bench").is_dir() else Path.cwd() / "bench-results"


def _write(res: dict, out_dir: Path) -> None:
    stamp = res["stamp"]
    text = json.dumps(res, indent=2, default=float)
    for name in (f"bench-{stamp}.json", "latest.json"):
        (out_dir / name).write_text(text)
    md = markdown(res)
    (out_dir / "latest.md").write_text(md)
    try:
        _plot(res, out_dir / f"bench-{stamp}.png")
        (out_dir / "latest.png").write_bytes((out_dir / f"bench-{stamp}.png").read_bytes())
    except Exception as exc:  # plotting must never lose the measurements
        res["notes"].append(f"plot failed: {exc}")


def markdown(res: dict) -> str:
    """The README table of a result."""
    s, m, st = res["summary"], res["machine"], res["setting"]
    lines = [f"Setting: {st.get('template', 'chat')} template, prefix {st['prefix_len']} + candidate "
             f"{st['candidate_len']} + suffix {st['suffix_len']} tokens, {st['heads']} heads, D={st['head_dim']}, "
             f"vocab {st['vocab_rows']}, max_abs + kl; {st['useful_mflop_per_candidate']:.2f} MFLOP useful per "
             f"candidate, {st.get('candidate_mflop_per_candidate', 0):.2f} of them not shared by a batch. Machine: {m['cpu']}, {m['cores']} cores, load average {m['loadavg_start'][0]:.1f} -> "
             f"{m['loadavg_end'][0]:.1f}.", "", *_ceiling_lines(m["ceilings"]), "",
             "| implementation | rate | candidates/s | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rate_rows(res)]
    lines.append("")
    lines += _native_lines(s) + _extension_lines(res)
    if "native_gflops" in res.get("pairs", {}):
        pr = res["pairs"]
        lines.append(f"- pair scan (one head and offset, {pr['pool']:,}-token pool): native {pr['native_s']:.2f} s "
                     f"({pr['native_gflops']:.0f} GFLOP/s, {100 * s['pairs_peak_fraction']:.0f}% of the FMA peak; "
                     f"{pr['torch_s'] / pr['native_s']:.1f}x the torch path's {pr['torch_s']:.1f} s, same best cell: "
                     f"{pr['same_best']}); the whole vocabulary would take {pr['full_vocab_s_per_head_offset']:.0f} s "
                     f"per head and offset")
    if "triton" in res:
        t = res["triton"]
        if "error" in t:
            lines.append(f"- Triton (interpreted, tiny pair): {t['error']}")
        else:
            lines.append(f"- Triton (interpreted, tiny pair, correctness only): max rel. err max_abs "
                         f"{t['max_rel_err_max_abs']:.1e}, kl {t['max_rel_err_kl']:.1e}, argmax equal {t['argmax_equal']}")
    if "targets_met" in s:
        lines.append("- targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in s["targets_met"].items()))
    lines += [f"- note: {n}" for n in res.get("notes", [])]
    lines.append(f"\nCommand: `{res['command']}` ({res['stamp']})\n")
    return "\n".join(lines)


def _ceiling_lines(c: dict) -> list[str]:
    th = c["theoretical"]
    of_th = f", {100 * c['fma_of_theoretical']:.0f}% of the theoretical peak" if c.get("fma_of_theoretical") else ""
    return [f"Ceilings: theoretical {th['gflops']:.0f} GFLOP/s ({th['cores']} cores x {th['clock_ghz']:.2f} GHz "
            f"[{th['clock_source']}] x {th['flop_per_cycle_per_core']} FLOP/cycle: {th['vector_bits']}-bit vectors, "
            f"{th['fma_pipes']} FMA pipes of {th['fma_pipe_bits']} bits, {th['fma_note']}); "
            f"**measured FMA peak {c['fma_gflops']:.0f} GFLOP/s**{of_th} (native micro-kernel, the roofline below); "
            f"sgemm {c['sgemm_n']}² {c['sgemm_gflops']:.0f} GFLOP/s ({100 * c['sgemm_of_fma']:.0f}% of the FMA peak)."]


def _rate_rows(res: dict) -> list[tuple[str, str, str, str]]:
    s, c = res["summary"], res["machine"]["ceilings"]
    rows = [("measured FMA peak (roofline)", f"{c['fma_gflops']:.0f} GFLOP/s", f"{s['roofline_cand_per_s']:,.0f}", ""),
            (f"torch.mm {c['sgemm_n']}² (sgemm)", f"{c['sgemm_gflops']:.0f} GFLOP/s ({100 * c['sgemm_of_fma']:.0f}% of peak)",
             "", "")]
    for dtype, label in (("float32", "native, fp32 table"), ("bfloat16", "native, bf16 table")):
        if dtype in s:
            d = s[dtype]
            rows.append((label, f"{d['useful_gflops']:.1f} GFLOP/s useful, {d['candidate_gflops']:.1f} per-candidate "
                                f"({100 * d['roofline_fraction']:.0f}% of peak)",
                         f"{d['cand_per_s']:,.0f}",
                         f"{d['vs_torch']:.0f}x torch, {d['vs_transformers']:,.0f}x transformers"))
    for key, label in (("torch", "torch reference, context cache"), ("transformers", "transformers Layer-0 modules, batched 32")):
        gflops = res[key]["cand_per_s"] * res["setting"]["useful_mflop_per_candidate"] / 1e3
        ratio = f"{s['torch_vs_transformers']:.1f}x transformers" if key == "torch" else "1x"
        rows.append((label, f"{gflops:.2g} GFLOP/s ({100 * gflops / c['fma_gflops']:.2g}% of peak)",
                     f"{res[key]['cand_per_s']:,.1f}", ratio))
    return rows


def _native_lines(s: dict) -> list[str]:
    lines = []
    for dtype in ("float32", "bfloat16"):
        if dtype in s:
            d = s[dtype]
            build = d.get("build_s_per_model", {})
            lines.append(f"- {dtype} table: {d['cand_per_hour'] / 1e6:.1f} M candidates/hour; build "
                         + (", ".join(f"{k} {v:.0f} s" for k, v in build.items()) or "not measured")
                         + f"; cached load {d['cached_table_load_s']:.1f} s; peak RSS {d['rss_gb']:.1f} GB; "
                         f"CPU-time bound {d['cpu_bound_cand_per_s']:,.0f}/s; max rel. diff vs torch "
                         f"max_abs {d['agreement_vs_torch']['max_abs']:.1e}, kl {d['agreement_vs_torch']['kl']:.1e}")
    return lines


def _extension_lines(res: dict) -> list[str]:
    lines = []
    for dtype in ("float32", "bfloat16"):
        ext = res.get(f"extensions_{dtype}", {})
        for name, t in ext.get("templates", {}).items():
            by = ", ".join(f"{c} cached: {r:,.0f}/s" for c, r in t["ext_per_s_by_prefix"].items())
            where = {"chat": f"chat template with a {t['prefix_len']}-token prefix (its default system prompt)",
                     "chat30": f"chat template with a {t['prefix_len']}-token prefix (the setting above)",
                     "raw": "raw template (the tokenizer has no chat template)"}[name]
            peak = res["summary"][f"extensions_{dtype}"][name]["peak_fraction"]
            lines.append(f"- extensions, {dtype} table, {where}: **{t['ext_per_s']:,.0f} extensions/s** over a "
                         f"{ext['pool']:,}-token pool ({by}); {t['useful_gflops']:.1f} GFLOP/s useful "
                         f"({100 * peak:.0f}% of the FMA peak); {t['ext_vs_batch']:.1f}x the rate of whole 8-token "
                         f"candidates in the same process ({t['batch_cand_per_s']:,.0f}/s)")
    return lines


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["summary"]
    names, rates = [], []
    for key, label in (("transformers", "transformers Layer-0\nrecomputed, batch 32"), ("torch", "torch reference\ncontext cache")):
        names.append(label)
        rates.append(res[key]["cand_per_s"])
    for dtype, label in (("bfloat16", "native\nbf16 table"), ("float32", "native\nfp32 table")):
        if dtype in s:
            names.append(label)
            rates.append(s[dtype]["cand_per_s"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    bars = ax.barh(names, rates, color=["#999999", "#6699cc", "#ee9944", "#dd5522"][: len(rates)])
    ax.set_xscale("log")
    ax.axvline(s["roofline_cand_per_s"], color="k", ls="--", lw=1)
    ax.text(s["roofline_cand_per_s"], len(names) - 0.5, " measured\n FMA peak", va="top", fontsize=8)
    ax.axvline(TARGETS["native_fp32_cand_per_s"], color="g", ls=":", lw=1)
    ax.text(TARGETS["native_fp32_cand_per_s"], -0.45, " target", color="g", va="bottom", fontsize=8)
    for bar, r in zip(bars, rates):
        ax.text(r, bar.get_y() + bar.get_height() / 2, f" {r:,.0f}/s", va="center", fontsize=8)
    st = res["setting"]
    ax.set_xlabel("candidates per second (log)")
    ax.set_title(f"l0score, Qwen2 Layer-0 pair (p={st['prefix_len']}, c={st['candidate_len']}, s={st['suffix_len']}, "
                 f"{st['heads']} heads), {res['machine']['cores']}-core CPU", fontsize=9)
    ax.set_xlim(min(rates) / 2, max(max(rates), s["roofline_cand_per_s"]) * 4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_child(kind: str, spec: dict) -> dict:
    """One measurement in this process (the parent runs each in a fresh `l0score.cli.bench --_child`)."""
    fn = {"build": _child_build, "native": _child_native, "triton": _child_triton,
          "extensions": _child_extensions, "pairs": _child_pairs}[kind]
    return fn(spec)
