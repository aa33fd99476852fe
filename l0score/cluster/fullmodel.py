"""The full-model objective on Ray: a FullModelScorer whose batches run on workers holding both models.

Every worker builds one `FullModelScorer` with the caller's probes, placements, dtype, system prompt
and separator (what `with_options` cannot change; each node reads the model files from its own disk).
The rest of the options (metrics, target ids, reply tokens, batch size, ...) travel with every call,
so a `with_options` view of the local scorer (the hunt's target route) is scored under its own
options on the same workers. A call's rows are cut exactly where one process cuts them (equal-length
groups, then `batch_size` rows per forward, each with its shared-prefix KV cache), and every cut goes
to whichever worker is free: the values are the ones one process computes, in the input order.
Everything else (pair, contexts, models for gcg's gradients, describe, ...) is the local scorer's.
"""
from __future__ import annotations

import math
import re
from dataclasses import fields

import torch

from ..judge.fullmodel import FullModelOptions, FullModelScorer, FullScores
from .connect import connect
from .pool import POOLS, WorkerPool, alive_nodes

FIXED = ("probes", "positions", "dtype", "device", "system", "sep", "system_prompts")  # what with_options cannot change


def _build(base: str, dormant: str, fixed: dict, use_gpu: bool) -> FullModelScorer:
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    return FullModelScorer(base, dormant, FullModelOptions(**{**fixed, "device": device}))


def _score_rows(scorer: FullModelScorer, options: dict, job) -> FullScores:
    """job: (the rows' indices in the caller's call, candidate rows of one length)."""
    index, rows = job
    try:
        return scorer.with_options(**options).score_batch(rows)
    except (ValueError, TypeError) as exc:  # name the candidate by its index in the caller's call
        raise type(exc)(re.sub(r"^candidate (\d+)", lambda m: f"candidate {index[int(m[1])]}", str(exc))) from None


def full_pool(scorer: FullModelScorer, address: str = "auto", threads: int = 1) -> WorkerPool:
    """Workers (one per GPU, else one per `threads` CPUs) holding this scorer's models and fixed options
    (made once, kept until a pool for other options replaces it: pool.POOLS)."""
    cluster = connect(address)
    use_gpu = any(n.get("Resources", {}).get("GPU", 0) >= 1 for n in alive_nodes())
    fixed = {"probes": tuple(scorer.probes), "positions": tuple(scorer.positions),
             **{k: getattr(scorer.options, k) for k in ("dtype", "system", "sep")},
             **({"system_prompts": tuple(scorer.systems)} if scorer.options.system_prompts is not None else {})}
    base, dormant = str(scorer.pair.base.path), str(scorer.pair.dormant.path)
    key = ("full", cluster, base, dormant, tuple(sorted(fixed.items())), threads)
    return POOLS.get(key, lambda: WorkerPool(_build, num_cpus=threads, num_gpus=1 if use_gpu else 0, threads=threads,
                                             node_args=lambda node: (base, dormant, fixed, use_gpu)))


class FullClusterScorer:
    """A FullModelScorer whose score_batch and score_extensions run on a full_pool (see the module doc)."""

    def __init__(self, scorer: FullModelScorer, pool: WorkerPool):
        self.local, self.pool = scorer, pool

    def __getattr__(self, name):
        return getattr(self.local, name)

    def score_batch(self, token_ids) -> FullScores:
        rows = token_ids.tolist() if hasattr(token_ids, "tolist") else [list(c) for c in token_ids]
        if not rows:
            return self.local.score_batch(rows)  # its own error for an empty call
        groups: dict[int, list[int]] = {}
        for b, c in enumerate(rows):
            groups.setdefault(len(c), []).append(b)
        return self._run(rows, list(groups.values()))

    def score_extensions(self, prefixes, pool=None, side: str = "right") -> FullScores:
        """As FullModelScorer.score_extensions: rows flattened as p * len(pool) + n."""
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        pool = (self.local.default_pool() if pool is None else torch.as_tensor(pool, dtype=torch.long)).tolist()
        prefixes = [[int(t) for t in p] for p in prefixes]
        rows = [p + [t] if side == "right" else [t] + p for p in prefixes for t in pool]
        return self._run(rows, [list(range(i * len(pool), (i + 1) * len(pool))) for i in range(len(prefixes))])

    def _run(self, rows: list[list[int]], groups: list[list[int]]) -> FullScores:
        """Score `rows`, each group (rows scored together by one process) cut at multiples of batch_size."""
        batch = self.local.options.batch_size
        per_job = batch * max(1, math.ceil(len(rows) / (2 * len(self.pool)) / batch))  # ~2 jobs per worker
        cuts = [idx[s:s + per_job] for idx in groups for s in range(0, len(idx), per_job)]
        options = {f.name: getattr(self.local.options, f.name) for f in fields(FullModelOptions) if f.name not in FIXED}
        parts = self.pool.map(_score_rows, [(idx, [rows[i] for i in idx]) for idx in cuts], shared=options)
        order = torch.tensor([i for idx in cuts for i in idx])
        merged = FullScores.cat(parts)
        return FullScores({k: torch.empty_like(v).index_copy_(0, order, v) for k, v in merged.values.items()})


def distribute_full(scorer, address: str = "auto") -> FullClusterScorer:
    if isinstance(scorer, FullClusterScorer):
        return scorer
    return FullClusterScorer(scorer, full_pool(scorer, address))
