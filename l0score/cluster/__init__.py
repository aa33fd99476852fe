"""Scale-out on Ray (docs/cluster.md): pair-scan shards, batches of candidates and full-model work spread
over a cluster, with results identical to one process and lost workers' work re-run.

Imported only when `--ray` is given (the CLI makes a RayExecutor): nothing else in l0score imports Ray.
    connect.py  joining a cluster (auto or an address)
    pool.py     WorkerPool: stateful actors, work to whichever is free, re-run on loss
    tables.py   the token table once per node in Ray's object store
    scoring.py  pair-scan shards and ClusterScorer (the drivers' drop-in Scorer)
    models.py   actors holding both full models (verify, the hunt's full-model stage)
    fullmodel.py  FullClusterScorer: a FullModelScorer's batches on workers holding both models
    executor.py RayExecutor (what judge, search and hunt are given) and make_executor(--ray value)
"""
from .connect import connect
from .executor import RayExecutor, make_executor
from .models import full_model_pool, verify_batches
from .pool import POOLS, WorkerPool
from .scoring import ClusterScorer, distribute, pair_shards, scorer_pool


def shutdown() -> None:
    """Release the pool this process made (workers, tables); Ray stays connected."""
    POOLS.close()


__all__ = ["connect", "RayExecutor", "make_executor", "WorkerPool", "ClusterScorer", "distribute", "pair_shards", "scorer_pool", "full_model_pool",
           "verify_batches", "shutdown"]
