"""Layer-0 scoring on Ray workers: pair-scan shards, and a Scorer whose batches run across a cluster.

Every worker holds a `Scorer` built like the caller's (same pair, template, heads, region, baseline,
offsets) on its node's shared token table (tables.py). `ClusterScorer` is a drop-in for the drivers:
`score_batch` sends contiguous slices of the batch, `score_extensions` slices of the pool, and
reassembles the fields in the input order, so every row is what one process computes; everything else
(pair, template, default_pool, ...) is the local scorer's. Pools are kept per (cluster, scorer
options) for the life of the process, so a seed scan and the search after it share workers and tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.scores import Scores
from ..core.template import Template
from .connect import connect
from .pool import POOLS, WorkerPool, alive_nodes
from .tables import NodeTables, attach

MIN_ROWS = 64  # smallest slice worth a round trip


@dataclass(frozen=True)
class ScorerSpec:
    """What a worker needs to build the caller's scorer (paths, not weights: each node reads its own)."""

    base: str
    dormant: str
    backend: str
    template: Template
    heads: tuple[int, ...]
    region: str
    baseline: str
    offsets: tuple[int, ...]
    table_dtype: str

    @classmethod
    def of(cls, scorer, table_dtype: str | None = None) -> "ScorerSpec":
        dtype = table_dtype or getattr(scorer.backend, "table_dtype", None) or "float32"
        return cls(str(scorer.pair.base.path), str(scorer.pair.dormant.path), scorer.backend.name, scorer.template,
                   tuple(scorer.heads), scorer.region, scorer.baseline_kind, tuple(scorer.offsets), dtype)


def _build_scorer(spec: ScorerSpec, table: dict | None = None) -> dict:
    """A worker's state: its scorer (on the node's shared table with the native backend) and what it
    attached, for the tests and the logs."""
    import ray

    from ..core.model_pair import ModelPair
    from ..scorer import Scorer

    shared, attached = attach(table) if table is not None else (None, {})
    scorer = Scorer(ModelPair.load(spec.base, spec.dormant), device="cpu" if shared is not None else None,
                    backend=spec.backend, template=spec.template, heads=spec.heads, region=spec.region,
                    baseline=spec.baseline, offsets=spec.offsets,
                    table=shared if shared is not None else None, table_dtype=spec.table_dtype)
    return {"scorer": scorer, "node": ray.get_runtime_context().get_node_id(), **attached}


def _describe(state, shared, item) -> dict:
    return {k: v for k, v in state.items() if k != "scorer"}


def _pair_shard(state, pool, shard):
    head, offset, top, shift = shard
    return state["scorer"].backend.pair_topk(pool, head, offset, top, shift)


def _score(state, template, job):
    """job: ("batch", ids, lengths, {}) or ("extensions", prefixes, pool slice, {"side": ...})."""
    kind, first, second, kw = job
    scorer = state["scorer"]
    if kind == "batch":
        return scorer.score_batch(first, second, template)
    return scorer.score_extensions(first, second, template, **kw)


class ScorerPool:
    """Workers (one per CPU of every node) holding the scorer of a spec, and the node tables they share."""

    def __init__(self, spec: ScorerSpec, threads: int = 1):
        self.spec = spec
        nodes = [n["NodeID"] for n in alive_nodes() if n.get("Resources", {}).get("CPU", 0) >= threads]
        self.tables = NodeTables(spec.base, spec.dormant, spec.table_dtype, nodes) if spec.backend == "native" else None
        self.workers = WorkerPool(_build_scorer, num_cpus=threads, threads=threads,
                                  node_args=lambda node: (spec,) + (self.tables.args(node) if self.tables else ()))

    def describe(self) -> list[dict]:
        """Per worker: node id, the object ids of the table it maps, whether that memory is writeable."""
        return self.workers.each(_describe)

    def close(self) -> None:
        self.workers.close()
        if self.tables is not None:
            self.tables.close()


def scorer_pool(scorer, address: str = "auto", threads: int = 1) -> ScorerPool:
    """The pool of workers for this scorer's options on the cluster at `address` (made once, kept
    until a pool for other options replaces it: pool.POOLS)."""
    cluster = connect(address)
    spec = ScorerSpec.of(scorer)
    return POOLS.get(("scorer", cluster, spec, threads), lambda: ScorerPool(spec, threads))


def pair_shards(scorer, pool: torch.Tensor, heads: list[int], offsets: list[int], top: int, shifts: dict,
                address: str = "auto"):
    """(head, [(values, query index, key index) per offset, in `offsets` order]) as each head's shards
    finish: one task per (head, offset), the exact per-shard top-k of the backend's pair_topk kernel."""
    workers = scorer_pool(scorer, address).workers
    shards = [(h, r, top, shifts[h, r]) for h in heads for r in offsets]
    waiting = {h: {} for h in heads}
    for i, result in workers.run(_pair_shard, shards, shared=pool):
        h, r = shards[i][:2]
        waiting[h][r] = result
        if len(waiting[h]) == len(offsets):
            per_offset = waiting.pop(h)
            yield h, [per_offset[r] for r in offsets]


class ClusterScorer:
    """A Scorer whose score_batch and score_extensions run on a ScorerPool (see the module doc)."""

    def __init__(self, scorer, pool: ScorerPool):
        self.local, self.pool = scorer, pool

    def __getattr__(self, name):
        return getattr(self.local, name)

    def score_batch(self, token_ids, lengths=None, template: Template | None = None) -> Scores:
        template = template or self.local.template
        batch = self.local.pack(token_ids, lengths, template)  # errors name the candidate, as in one process
        width = int(batch.cand_len.max())
        ids, lens = batch.ids[:, :width].numpy(), batch.cand_len.numpy()
        jobs = [("batch", ids[s], lens[s], {}) for s in _slices(len(lens), len(self.pool.workers))]
        return cat_scores(self.pool.workers.map(_score, jobs, shared=template))

    def score_extensions(self, prefixes, pool=None, template: Template | None = None, **kw) -> Scores:
        """As Scorer.score_extensions (its keyword options, e.g. side=, are passed through)."""
        template = template or self.local.template
        pool = self.local.default_pool() if pool is None else torch.as_tensor(pool)
        prefixes = [list(p) for p in prefixes]
        slices = _slices(len(pool), len(self.pool.workers))
        parts = self.pool.workers.map(_score, [("extensions", prefixes, pool[s], kw) for s in slices], shared=template)
        # each part is [prefix, pool slice] flattened: regroup by prefix, then slices side by side
        fields = {}
        for name in ("max_abs", "head_max", "argmax", "kl", "head_kl", "band"):
            blocks = [getattr(p, name).reshape(len(prefixes), s.stop - s.start, *getattr(p, name).shape[1:])
                      for p, s in zip(parts, slices)]
            fields[name] = torch.cat(blocks, 1).reshape(len(prefixes) * len(pool), *blocks[0].shape[2:])
        return Scores(**fields, heads=parts[0].heads, offsets=parts[0].offsets)


def _slices(n: int, workers: int) -> list[slice]:
    """Contiguous slices: two per worker (so a slow worker holds up less), none under MIN_ROWS rows."""
    k = max(1, min(2 * workers, math.ceil(n / MIN_ROWS)))
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def cat_scores(parts: list[Scores]) -> Scores:
    fields = {name: torch.cat([getattr(p, name) for p in parts]) for name in
              ("max_abs", "head_max", "argmax", "kl", "head_kl", "band")}
    return Scores(**fields, heads=parts[0].heads, offsets=parts[0].offsets)


def distribute(scorer, address: str = "auto"):
    """The drivers' switch: `scorer` with its batches spread over the Ray cluster at `address` (a
    full-model scorer's on workers holding both models: fullmodel.py)."""
    if getattr(scorer, "kind", None) == "full":
        from .fullmodel import distribute_full

        return distribute_full(scorer, address)
    if isinstance(scorer, ClusterScorer):
        return scorer
    return ClusterScorer(scorer, scorer_pool(scorer, address))
