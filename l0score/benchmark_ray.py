"""`l0score bench --ray`: Ray's overhead on one machine, the same exact pair scan by the native kernel in
one process with 2 threads and through l0score.cluster with 2 one-thread Ray workers (one task per
(head, offset)).

    l0score bench --ray [--pool 16000] [--offsets 1,2] [--dtype bfloat16] [--out DIR] [--paper]

Ray is started only inside a private network namespace with loopback up (the script re-runs itself
under `unshare -n` as root), as in tests/test_cluster.py. Pair: the synthetic qwen2-7b-l0 pair (Qwen2-7B's
Layer-0 shapes) under the cache directory, made on first use. Writes OUT/ray-<stamp>.json (default
bench/results).
"""
from __future__ import annotations

import os
import time


def loopback_only() -> bool:
    return {line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]} == {"lo"}


# --- on paper: N GPU nodes (one H100 each) -------------------------------------------------------
# Per-GPU rates from the README's GPU estimate (unmeasured): a full-vocabulary (head, offset) pair-scan
# shard takes 8-15 s / 28 heads (roofline 5.2 s / 28); score_extensions 1-2 M/s.
SHARD_S = (8.0 / 28, 15.0 / 28)
EXT_PER_S = (2.0e6, 1.0e6)
# Assumptions of this table (not measured): the full-model stage's comparative objective scores 10^3
# candidates/s per GPU (docs/architecture.md#stages says 10^2-10^4/s; prompt-prefix KV cache reused); verify runs ~20
# prompts/s per GPU (batched, 32 new tokens); a node's setup (Ray workers, Layer-0 read, table build:
# 0.5 s) takes 10 s, plus 15 s to load both full models for the full-model stages; $3 per GPU-hour.
FULL_PER_S, VERIFY_PROMPTS_PER_S, SETUP_S, MODELS_S, DOLLARS_PER_GPU_H = 1e3, 20.0, 10.0, 15.0, 3.0
HEADS, VOCAB = 28, 151646


def scan_seconds(n: int, shard_s: float, offsets: int = 8) -> float:
    """Shards in waves of n; only top-K triples come back (KBs), so the network adds nothing."""
    return SETUP_S + -(-HEADS * offsets // n) * shard_s


def hunt_seconds(n: int, shard_s: float, ext_per_s: float, width: int = 64, full_cands: float = 1e5,
                 verify_cands: int = 100) -> float:
    """3-token hunt: pair scan at offsets 1-2 (seeds), a width-64 Layer-0 beam over the vocabulary
    (1 + 2 x 64 prefixes x 152k extensions), the full-model stage on 10^5 candidates, and verify of
    the best 100 (8 probes x 2 placements each)."""
    layer0 = scan_seconds(n, shard_s, offsets=2) + (1 + 2 * width) * VOCAB / ext_per_s / n
    full = MODELS_S + full_cands / FULL_PER_S / n + verify_cands * 16 / VERIFY_PROMPTS_PER_S / n
    return layer0 + full


def paper_table(nodes=(1, 2, 4, 8, 16, 32)) -> str:
    rows = ["| GPU nodes N | 28 heads x 8 offsets full-vocabulary scan | cost | 3-token hunt | cost |",
            "|---:|---|---|---|---|"]
    for n in nodes:
        scan = [scan_seconds(n, s) for s in SHARD_S]
        hunt = [hunt_seconds(n, s, e) for s, e in zip(SHARD_S, EXT_PER_S)]
        cost = lambda t: f"${n * t[0] / 3600 * DOLLARS_PER_GPU_H:.2f}-{n * t[1] / 3600 * DOLLARS_PER_GPU_H:.2f}"
        rows.append(f"| {n} | {scan[0]:.0f}-{scan[1]:.0f} s | {cost(scan)} | {hunt[0]:.0f}-{hunt[1]:.0f} s | {cost(hunt)} |")
    return "\n".join(rows)


def measure(pool_size: int, offsets: str, dtype: str, top: int) -> dict:
    """The scan in one process with 2 native threads, then on a local 2-CPU Ray with one-thread
    workers (pool start timed apart); inside the loopback-only namespace."""
    import ray

    from . import Scorer, _native, cluster
    from .core.model_pair import ModelPair
    from .synthetic.cached import default_pair
    from .search import pair_scan

    offsets = [int(r) for r in offsets.split(",")]
    pair_dir = default_pair("qwen2-7b-l0")
    load_start = os.getloadavg()
    scorer = Scorer(ModelPair.load(pair_dir / "base", pair_dir / "dormant"), backend="native", template="raw",
                    table=True, table_dtype=dtype)
    pool = scorer.default_pool()[:pool_size]
    shards = len(scorer.heads) * len(offsets)
    flops = 4.0 * scorer.pair.config.head_dim * len(pool) ** 2 * shards

    _native.set_num_threads(2)
    t = time.perf_counter()
    single = pair_scan(scorer, pool, offsets=offsets, top=top, progress=False)
    single_s = time.perf_counter() - t

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    workers = cluster.scorer_pool(scorer, "auto", threads=1)
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    on_ray = pair_scan(scorer, pool, offsets=offsets, top=top, progress=False,
                      executor=cluster.RayExecutor("auto"))
    ray_s = time.perf_counter() - t
    described = workers.describe()
    cluster.shutdown()
    ray.shutdown()

    return {
        "stamp": time.strftime("%Y%m%d-%H%M%S"), "pair": str(pair_dir), "table_dtype": dtype, "pool": len(pool),
        "heads": len(scorer.heads), "offsets": offsets, "shards": shards, "top": top, "gflop": flops / 1e9,
        "single_process_2_threads_s": single_s, "ray_2_workers_1_thread_s": ray_s,
        "ray_overhead": ray_s / single_s - 1.0, "ray_pool_setup_s": setup_s,
        "single_gflops": flops / single_s / 1e9, "ray_gflops": flops / ray_s / 1e9,
        "identical_results": single == on_ray, "workers": len(described),
        "tables_in_object_store": len({tuple(w["table_ids"]) for w in described}),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
    }
