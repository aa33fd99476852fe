"""Full-model workers: one actor per GPU (or per `threads` CPUs when the cluster has no GPU) holding
both complete models once, for `verify` and the hunt's full-model stage.

`full_model_pool(base, dormant, ...)` gives a WorkerPool whose state is setup(base, dormant, dtype,
device) (default: {"base": model, "dormant": model} through judge/models.load_model); the caller
maps its own picklable fn(state, shared, item) over work items with `pool.map` / `pool.run`.
Each node reads the model files from its own disk (same path on every node, or a shared file system):
only prompts and results cross the network.
"""
from __future__ import annotations

from .connect import connect
from .pool import POOLS, WorkerPool, alive_nodes


def load_models(base: str, dormant: str, dtype, device: str) -> dict:
    from ..judge.models import load_model

    return {"base": load_model(base, device, dtype), "dormant": load_model(dormant, device, dtype)}


def _setup(setup, base, dormant, dtype, use_gpu: bool):
    import torch

    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    return setup(base, dormant, dtype, device)


def full_model_pool(base, dormant, dtype, address: str = "auto", threads: int = 1, setup=load_models) -> WorkerPool:
    """Workers holding both models (made once per cluster, paths, dtype, threads and setup; kept until
    a pool for other options replaces it: pool.POOLS)."""
    cluster = connect(address)
    use_gpu = any(n.get("Resources", {}).get("GPU", 0) >= 1 for n in alive_nodes())
    args = (setup, str(base), str(dormant), dtype, use_gpu)
    key = ("models", cluster, str(base), str(dormant), str(dtype), threads, setup)
    return POOLS.get(key, lambda: WorkerPool(_setup, num_cpus=threads, num_gpus=1 if use_gpu else 0, threads=threads,
                                             node_args=lambda node: args))


def _run_prompts(models: dict, options: dict, job) -> dict:
    """Both models over one batch of prompts: {tag: (last log-probs, hidden states, generations)}."""
    from ..judge.models import run_batch

    ids, seeds = job
    return {tag: run_batch(model, ids, options["pad_id"], options["stop_ids"], options["max_new_tokens"],
                           options["sample"], options["temperature"], options["top_p"], seeds)
            for tag, model in models.items()}


def verify_batches(address: str, base, dormant, dtype, jobs: list, options: dict, threads: int = 1):
    """(job index, {"base": ..., "dormant": ...}) as batches finish, each on whichever worker is free.
    jobs: (prompt id lists, per-prompt seeds); options: run_batch's decoding options."""
    pool = full_model_pool(base, dormant, dtype, address, threads)
    yield from pool.run(_run_prompts, jobs, shared=options)
