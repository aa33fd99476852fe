"""The token table once per node, in that node's Ray object store.

A `_TableHolder` actor per node (no CPU reserved) loads the pair's table through the on-disk cache of
that node (backends/table_cache.py, keyed as in a single process: built there on first use, read
back afterwards) and `ray.put`s its four arrays. The node's workers `ray.get` them: numpy arrays
come out of the object store as read-only views of its shared memory, so N workers on a node map one
copy, and no table crosses the network. The holder owns the objects and stays alive as long as the
pool that uses them.
"""
from __future__ import annotations

import warnings

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..backends.token_table import TokenTable

FIELDS = ("q_base", "k_base", "q_dorm", "k_dorm")


@ray.remote(num_cpus=0)
class _TableHolder:
    def __init__(self, base: str, dormant: str, dtype: str):
        from ..backends.native import load_table
        from ..core.checkpoint import check_compatible, load_layer0
        from ..core.model_pair import ModelPair

        b, d = load_layer0(base), load_layer0(dormant)
        check_compatible(b, d)
        table, info = load_table(ModelPair(b, d), dtype)
        # bfloat16 has no numpy dtype: stored as its int16 bits, viewed back by the workers
        self.refs = [ray.put(_as_array(getattr(table, f))) for f in FIELDS]
        self.dtype = dtype
        self.source = {role: ci.source for role, ci in info.items()}  # "cache" or "built", per model
        self.node = ray.get_runtime_context().get_node_id()

    def table(self) -> dict:
        return {"refs": self.refs, "dtype": self.dtype, "source": self.source, "node": self.node}


def _as_array(t: torch.Tensor) -> np.ndarray:
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


class NodeTables:
    """One holder per node that runs workers; `args(node)` is what a worker there is set up with."""

    def __init__(self, base: str, dormant: str, dtype: str, nodes: list[str]):
        self.holders = {node: _TableHolder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                                                   ).remote(base, dormant, dtype) for node in nodes}
        self.tables = {node: ray.get(h.table.remote()) for node, h in self.holders.items()}

    def args(self, node: str) -> tuple:
        return (self.tables[node],)

    def close(self) -> None:
        for h in self.holders.values():
            ray.kill(h)
        self.holders.clear()


def attach(table: dict) -> tuple[TokenTable, dict]:
    """The node's shared table as a TokenTable of zero-copy tensors, and what was attached: the object
    ids and whether any array came back writeable (a private copy instead of the store's memory)."""
    arrays = ray.get(table["refs"])
    with warnings.catch_warnings():  # read-only views: nothing writes a table after it is built
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = [torch.from_numpy(a) for a in arrays]
    if table["dtype"] == "bfloat16":
        tensors = [t.view(torch.bfloat16) for t in tensors]
    return TokenTable(*tensors), {"table_ids": [r.hex() for r in table["refs"]],
                                  "table_writeable": any(a.flags.writeable for a in arrays)}
