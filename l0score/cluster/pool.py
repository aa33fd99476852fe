"""`WorkerPool`: long-lived Ray actors that each build an expensive state once (a scorer on the node's
shared token table, or both full models) and then run work items sent to whichever actor is free.

Faults: an item whose actor dies (its worker process killed, its node lost) goes back to the queue
and runs on another actor; the dead actor is replaced on its node when that node is still alive. An
item that kills `max_attempts` actors in a row is reported instead of retried forever. Errors raised by
the work itself (bad input) are not faults: they propagate with their own type and message.
Results come back in the input order (`map`) or as they finish (`run`), so what the caller assembles
does not depend on which worker ran what.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator

import ray
from ray.exceptions import (ActorDiedError, ActorUnavailableError, GetTimeoutError, NodeDiedError, ObjectLostError,
                            RayActorError, RayTaskError, WorkerCrashedError)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

START_SECONDS = 900.0  # a worker's setup (loading its state) must finish within this
# what a lost worker or node looks like from the driver
LOST = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError, NodeDiedError, ObjectLostError)


@ray.remote
class _Worker:
    """Holds setup(*args)'s state; runs fn(state, shared, item) for the driver."""

    def __init__(self, setup: Callable, args: tuple, threads: int):
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        from .. import _native

        torch.set_num_threads(threads)
        _native.set_num_threads(threads)
        self.state = setup(*args)

    def ready(self) -> dict:
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def call(self, fn: Callable, shared: Any, item: Any) -> Any:
        return fn(self.state, shared, item)


class Pools:
    """The process's live pools by key. One at a time: a pool holds every CPU (or GPU) of the cluster,
    so a pool for other options (another scorer, or full models after scoring) replaces the last one."""

    def __init__(self):
        self.live: dict = {}

    def get(self, key, make: Callable):
        if key not in self.live:
            self.close()
            self.live[key] = make()
        return self.live[key]

    def close(self) -> None:
        while self.live:
            self.live.popitem()[1].close()


POOLS = Pools()


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


class WorkerPool:
    """One actor per `num_gpus` GPUs (when num_gpus > 0) or per `num_cpus` CPUs of every alive node.

    setup: a picklable function building an actor's state; its arguments are `node_args(node_id)`
    (e.g. that node's token-table object refs), or none. threads: torch/OpenMP threads per actor
    (default num_cpus)."""

    def __init__(self, setup: Callable, *, num_cpus: int = 1, num_gpus: int = 0, node_args: Callable | None = None,
                 threads: int | None = None, max_attempts: int = 3):
        if num_cpus < 1 or num_gpus < 0:
            raise ValueError(f"num_cpus must be >= 1 and num_gpus >= 0, got {num_cpus} and {num_gpus}")
        self.setup, self.node_args = setup, node_args or (lambda node: ())
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.threads = threads or num_cpus
        self.max_attempts = max_attempts
        self.failures = 0  # actors lost while running an item (reported, and asserted by the fault tests)
        self.actors: dict[int, tuple[str, Any]] = {}  # slot -> (node id, handle)
        self._next_slot = 0
        for node in alive_nodes():
            res = node.get("Resources", {})
            slots = int(res.get("GPU", 0) // num_gpus) if num_gpus else int(res.get("CPU", 0) // num_cpus)
            for _ in range(slots):
                self._start(node["NodeID"])
        if not self.actors:
            need = f"{num_gpus} GPU(s)" if num_gpus else f"{num_cpus} CPU(s)"
            raise ValueError(f"no node of the Ray cluster has {need} for a worker")
        self.info = self._wait_ready(list(self.actors))

    def _start(self, node: str) -> int:
        actor = _Worker.options(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=0,
                                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                                ).remote(self.setup, tuple(self.node_args(node)), self.threads)
        slot = self._next_slot
        self._next_slot += 1
        self.actors[slot] = (node, actor)
        return slot

    def _wait_ready(self, slots: list[int]) -> dict[int, dict]:
        """Setup errors are the caller's (a model path missing on a node...): raised, naming the node."""
        info = {}
        for slot in slots:
            node, actor = self.actors[slot]
            try:
                info[slot] = ray.get(actor.ready.remote(), timeout=START_SECONDS)
            except GetTimeoutError:
                raise RuntimeError(f"a Ray worker did not start on node {node} within {START_SECONDS:.0f} s (its "
                                   "CPUs/GPUs held by other actors, or a slow model load)") from None
            except RayActorError as exc:
                if not _node_alive(node):
                    self.actors.pop(slot)
                    continue
                raise RuntimeError(f"a Ray worker could not start on node {node}: {exc}") from None
        if not info:
            raise RuntimeError("every Ray worker was lost while starting")
        return info

    def __len__(self) -> int:
        return len(self.actors)

    def map(self, fn: Callable, items: list, shared: Any = None) -> list:
        """fn(state, shared, item) for every item, in the input order."""
        out = [None] * len(items)
        for i, result in self.run(fn, items, shared):
            out[i] = result
        return out

    def run(self, fn: Callable, items: Iterable, shared: Any = None) -> Iterator[tuple[int, Any]]:
        """(index, fn(state, shared, item)) as items finish. `shared` is put in the object store once."""
        items = list(items)
        shared_ref = ray.put(shared)
        queue = deque(range(len(items)))
        attempts = [0] * len(items)
        idle = deque(self.actors)
        joining: dict[Any, int] = {}  # ready() refs of replacement actors -> slot
        running: dict[Any, tuple[int, int]] = {}  # call refs -> (slot, item index)
        try:
            while queue or running:
                while queue and idle:
                    slot = idle.popleft()
                    i = queue.popleft()
                    running[self.actors[slot][1].call.remote(fn, shared_ref, items[i])] = (slot, i)
                if not running and not joining:
                    raise RuntimeError(f"every Ray worker is lost; {len(queue)} of {len(items)} work items unfinished")
                done, _ = ray.wait(list(running) + list(joining), num_returns=1)
                ref = done[0]
                if ref in joining:
                    slot = joining.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(slot)
                    except LOST:
                        self.actors.pop(slot, None)
                    continue
                slot, i = running.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError as exc:  # the work raised: the caller's error, not a lost worker
                    raise _cause(exc) from None
                except LOST as exc:
                    self.failures += 1
                    attempts[i] += 1
                    if attempts[i] >= self.max_attempts:
                        raise RuntimeError(f"work item {i} was lost with its Ray worker {attempts[i]} times; "
                                           f"last: {exc}") from None
                    queue.appendleft(i)
                    node, _ = self.actors.pop(slot)
                    if _node_alive(node):  # a worker process died: replace it on the same node
                        new = self._start(node)
                        joining[self.actors[new][1].ready.remote()] = new
                    continue
                idle.append(slot)
                yield i, result
        finally:
            for ref in running:
                ray.cancel(ref, force=False)

    def each(self, fn: Callable, shared: Any = None) -> list:
        """fn(state, shared, None) once on every worker (e.g. to ask what it holds)."""
        return ray.get([actor.call.remote(fn, shared, None) for _, actor in self.actors.values()])

    def close(self) -> None:
        for _, actor in self.actors.values():
            ray.kill(actor)
        self.actors.clear()


def _node_alive(node: str) -> bool:
    return any(n["NodeID"] == node for n in alive_nodes())


def _cause(exc: RayTaskError) -> BaseException:
    """The exception the remote function raised (its own type and message), when Ray kept it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
