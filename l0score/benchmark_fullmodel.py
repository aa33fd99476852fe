"""`l0score bench --fullmodel`: the full-model objective's speed with and without prefix KV-cache reuse.

On a trained pair (default: the seed-0 trained pair under the cache directory, built if missing),
`FullModelScorer` with its default options (FullModelOptions: 3 probes x 2 placements, metrics
kl/js/hidden, batch 64) is timed twice, `cache=True` (the prompt before the candidate, plus the
candidates' shared prefix, run once and its KV cache reused) and `cache=False` (every prompt run whole):

  (a) score_batch of random 3-token candidates (no shared prefix: only the prompt prefix is reused);
  (b) score_extensions: prefix + [t] over a 64-token pool for 2-token prefixes (what beam/coord call;
      the candidate prefix is cached too, each evaluation runs the new token and the prompt's rest).

Both on the default placements (before and after the probe) and, for comparison, after the probe
only: placed before the probe, the candidate is followed by the whole probe, which no cache can skip.

An evaluation is one candidate in one context (probe x placement) through both models; the table
gives evaluations/s (median of --reps timings after a warm-up), the speed-up, and the largest
difference between the two modes' metrics (they compute the same thing). The run also prints the
paper estimate of `h100_estimate` for Qwen2-7B (docs/hunt-speed.md explains it).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

QWEN2_7B = dict(params=7.6e9, layers=28, hidden=3584, kv_heads=4, head_dim=128)
H100 = dict(bf16_flops=989e12, hbm_bytes_s=3.35e12, memory_gb=80)


def trained_pair_dirs(base=None, dormant=None, seed: int = 0) -> tuple[Path, Path]:
    if (base is None) != (dormant is None):
        raise ValueError("give both --base and --dormant, or neither (the cached trained pair)")
    if base is not None:
        return Path(base), Path(dormant)
    from .synthetic.trained import cached_trained_pair

    root = cached_trained_pair(seed=seed)
    return root / "base", root / "dormant"


def random_candidates(pool: torch.Tensor, n: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return pool[torch.randint(len(pool), (n, length), generator=gen)]


def time_call(fn, reps: int) -> tuple[float, float, object]:
    """Median wall and process-CPU seconds of fn() over reps runs after one warm-up run; the last
    result. With one torch thread the CPU time is the work done, whatever else loads the machine."""
    out = fn()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), out


def max_difference(a, b) -> float:
    return max(float((a.metric(m).double() - b.metric(m).double()).abs().max()) for m in a.values)


def measure(scorers: dict, cands: torch.Tensor, prefixes: list, pool: torch.Tensor, reps: int) -> dict:
    """Both workloads in both modes: seconds, evaluations/s, the modes' largest disagreement, and the
    speed-up the token counts allow (whole prompt tokens / tokens run per evaluation with reuse)."""
    tokens = context_tokens(scorers["cache"])
    whole = tokens["prefix"] + tokens["suffix"] + 3
    work = {"score_batch": (lambda s: s.score_batch(cands), len(cands), 3),
            "score_extensions": (lambda s: s.score_extensions(prefixes, pool), len(prefixes) * len(pool), 1)}
    out = {}
    for name, (call, n_cand, run_tokens) in work.items():
        n_eval = n_cand * tokens["contexts"]
        row, results = {"candidates": n_cand, "evaluations": n_eval}, {}
        for mode, scorer in scorers.items():
            seconds, cpu, results[mode] = time_call(lambda: call(scorer), reps)
            row[f"{mode}_seconds"], row[f"{mode}_cpu_seconds"] = seconds, cpu
            row[f"{mode}_evaluations_per_s"] = n_eval / seconds
            row[f"{mode}_evaluations_per_cpu_s"] = n_eval / cpu
        row["speedup"] = row["cache_evaluations_per_s"] / row["no_cache_evaluations_per_s"]
        row["speedup_cpu"] = row["cache_evaluations_per_cpu_s"] / row["no_cache_evaluations_per_cpu_s"]
        row["token_ratio"] = whole / (run_tokens + tokens["suffix"])
        row["max_metric_difference"] = max_difference(results["cache"], results["no_cache"])
        out[name] = row
    return out


def context_tokens(scorer) -> dict:
    """Mean prompt-prefix and suffix lengths of the scorer's contexts (tokens around the candidate)."""
    ctx = scorer.contexts
    return {"prefix": sum(len(c.prefix_ids) for c in ctx) / len(ctx), "suffix": sum(len(c.suffix_ids) for c in ctx) / len(ctx),
            "contexts": len(ctx)}


def h100_estimate(prefix: float = 18.3, suffix: float = 8.8, contexts: int = 6, mfu: float = 0.4,
                  batch: int = 512, hours: float = 1.0) -> dict:
    """Paper estimate: full-model evaluations/s of Qwen2-7B pairs on one H100 in bf16, and the pool
    size K whose K^L ordered candidates x contexts fit in `hours` for L = 2 and 3.

    prefix / suffix: prompt tokens before / after the candidate, mean over the default contexts with
    Qwen2's real tokenizer (14-token system + user header; probes of ~7.7 tokens; 5-token generation
    prompt). An evaluation runs `1 + suffix` tokens (extensions, cached candidate prefix) or `L + suffix`
    (score_batch) through both models at ~2 x params FLOPs per token plus attention over the context;
    each new candidate prefix also runs its `prefix + L - 1` head once per context, shared by K
    extensions. `mfu`: the fraction of the bf16 dense peak reached at `batch` evaluations per forward.
    """
    m, g = QWEN2_7B, H100
    context = prefix + suffix + 3
    per_token = 2 * m["params"] + 4 * m["layers"] * m["hidden"] * context  # matmuls + QK^T, AV
    rate = lambda tokens: mfu * g["bf16_flops"] / (2 * tokens * per_token)  # both models
    kv_per_token = 2 * m["layers"] * m["kv_heads"] * m["head_dim"] * 2  # K and V, bf16
    memory = {"weights_gb": 2 * 2 * m["params"] / 1e9,
              "kv_cache_gb": 2 * batch * context * kv_per_token / 1e9,
              "logits_gb": 2 * batch * (1 + suffix) * 152064 * 2 / 1e9}
    est = {"assumptions": {"prefix_tokens": prefix, "suffix_tokens": suffix, "contexts": contexts, "mfu": mfu,
                           "batch": batch, "flops_per_token_per_model": per_token, "hours": hours},
           "memory": memory, "score_batch_3": {"evaluations_per_s": rate(3 + suffix)}}
    for L in (2, 3):
        k = _largest_pool(L, lambda K: K**L * contexts / rate(1 + suffix + (prefix + L - 1) / K), hours * 3600)
        est[f"hunt_{L}"] = {"pool_K": k, "candidates": k**L,
                            "evaluations_per_s": rate(1 + suffix + (prefix + L - 1) / k),
                            "seconds": k**L * contexts / rate(1 + suffix + (prefix + L - 1) / k)}
    est["extensions"] = {"evaluations_per_s": rate(1 + suffix), "candidates_per_s": rate(1 + suffix) / contexts}
    return est


def _largest_pool(length: int, seconds_for, budget: float) -> int:
    k = 1
    while seconds_for(k + 1) <= budget:
        k += 1
    return k


def markdown(res: dict) -> str:
    rows = ["| placements | workload | evaluations | cache reuse: eval/s (per CPU s) | whole prompts: eval/s "
            "(per CPU s) | speed-up wall (CPU) | token ratio | max metric diff |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for setting, measured in res["measured"].items():
        for name, r in measured.items():
            rows.append(f"| {setting} | {name} | {r['evaluations']:,} | {r['cache_evaluations_per_s']:,.0f} "
                        f"({r['cache_evaluations_per_cpu_s']:,.0f}) | {r['no_cache_evaluations_per_s']:,.0f} "
                        f"({r['no_cache_evaluations_per_cpu_s']:,.0f}) | {r['speedup']:.1f}x ({r['speedup_cpu']:.1f}x) | "
                        f"{r['token_ratio']:.1f}x | {r['max_metric_difference']:.1e} |")
    e = res["h100_estimate"]
    rows += ["", f"Qwen2-7B pair on one H100, bf16, MFU {e['assumptions']['mfu']:.0%}, batch {e['assumptions']['batch']} "
             f"(paper estimate): extensions {e['extensions']['evaluations_per_s']:,.0f} evaluations/s "
             f"({e['extensions']['candidates_per_s']:,.0f} candidates/s over {e['assumptions']['contexts']} contexts); "
             f"K = {e['hunt_2']['pool_K']} for a 2-token hunt, K = {e['hunt_3']['pool_K']} for a 3-token hunt in "
             f"{e['assumptions']['hours']:g} h; memory {sum(e['memory'].values()):.0f} GB."]
    return "\n".join(rows)


def run(base=None, dormant=None, n_batch: int = 256, n_prefixes: int = 4, pool_size: int = 64, reps: int = 3,
        threads: int = 1, out=None, command: str = "") -> dict:
    from .judge.fullmodel import FullModelOptions, FullModelScorer

    torch.set_num_threads(threads)
    base, dormant = trained_pair_dirs(base, dormant)
    default = FullModelOptions(device="cpu")
    settings = {"before+after (default)": default, "after only": replace(default, positions=("after",))}
    load = os.getloadavg()
    res = {"command": command, "pair": {"base": str(base), "dormant": str(dormant)}, "threads": threads,
           "options": {"probes": list(default.resolved_probes()), "metrics": list(default.resolved_metrics()),
                       "batch_size": default.batch_size},
           "context_tokens": {}, "measured": {}}
    for setting, opts in settings.items():
        scorers = {"cache": FullModelScorer(base, dormant, opts),
                   "no_cache": FullModelScorer(base, dormant, replace(opts, cache=False))}
        pool = random_candidates(scorers["cache"].default_pool(), pool_size, 1, seed=1)[:, 0]
        cands = random_candidates(scorers["cache"].default_pool(), n_batch, 3, seed=0)
        prefixes = random_candidates(pool, n_prefixes, 2, seed=2).tolist()
        res["context_tokens"][setting] = context_tokens(scorers["cache"])
        res["measured"][setting] = measure(scorers, cands, prefixes, pool, reps)
    res["load_average"] = {"before": load, "after": os.getloadavg()}
    res["h100_estimate"] = h100_estimate()
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "fullmodel.json").write_text(json.dumps(res, indent=2))
        Path(out, "fullmodel.md").write_text(markdown(res) + "\n")
    return res
