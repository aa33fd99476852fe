"""`RayExecutor`: the Executor (l0score.core.protocols) that runs work on a Ray cluster, and
`make_executor`, the one place a `--ray` address becomes an executor.

judge, search and hunt take an `executor=` and call its three methods; they never import this package.
"""
from __future__ import annotations


class RayExecutor:
    """Work on the Ray cluster at `address` ("auto": this machine's cluster, or a new local one; else
    host:port of a head). Results are the same as in one process (docs/cluster.md)."""

    def __init__(self, address: str = "auto"):
        self.address = address

    def scorer(self, scorer):
        """`scorer` with its score_batch / score_extensions spread over the cluster's workers."""
        from .scoring import distribute

        return distribute(scorer, self.address)

    def pair_shards(self, scorer, pool, heads, offsets, top, shifts):
        """(head, per-offset results) as each head's (head, offset) tasks finish (search/pairs.py)."""
        from .scoring import pair_shards

        return pair_shards(scorer, pool, heads, offsets, top, shifts, self.address)

    def verify_batches(self, base, dormant, dtype, jobs, options, threads: int = 1):
        """(job index, {"base": ..., "dormant": ...}) as verify's generation batches finish."""
        from .models import verify_batches

        return verify_batches(self.address, base, dormant, dtype, jobs, options, threads)

    def __repr__(self) -> str:
        return f"RayExecutor({self.address!r})"


def make_executor(ray_address: str | None):
    """The executor for a `--ray` value: None runs everything in this process; "auto" or host:port
    a Ray cluster."""
    return None if ray_address is None else RayExecutor(ray_address)
