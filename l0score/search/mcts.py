"""Monte Carlo tree search (PUCT) over token prefixes.

Nodes are prefixes. Expanding a node scores every pool token appended to it in one incremental call
(`score_extensions`); its `branch` best become children with priors softmax(z / prior_temp), and
each child keeps its exact score as z against random candidates of its own length. Leaves are
picked `batch` at a time with virtual loss (so one batch spreads over the tree). A leaf's value is
the z at full length of its rollout: "greedy" (the default) completes each leaf by its best
extensions (batched across leaves), "random" by uniform pool tokens; "none" takes the exact z
already computed at its expansion, so no candidate is spent on rollouts and the tree expands more
prefixes per budget, but it reaches full length only by expanding (measured in docs/search.md). An
unvisited child starts at its own exact z (not 0), so the exact scores order the first visits. With rollout "none", (length - 1) x pool candidates of the budget are kept to complete the
best unfinished prefix greedily at the end. With seeds, the root's children are the seed prefixes
(e.g. the best token pairs).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .beam import _check_length
from .run import SearchRun, rng_from

ROLLOUTS = ("none", "greedy", "random")


def mcts(scorer, *, length: int, branch: int = 16, batch: int = 8, c_puct: float = 1.5, prior_temp: float = 1.0,
         rollout: str = "greedy", virtual_loss: float = 3.0, seeds=None, **run_kw) -> list[dict]:
    _check_length(length)
    if rollout not in ROLLOUTS:
        raise ValueError(f"rollout must be one of {', '.join(ROLLOUTS)}, got {rollout!r}")
    if branch <= 0 or batch <= 0:
        raise ValueError(f"branch and batch must be positive, got {branch} and {batch}")
    if run_kw.get("budget") is None and run_kw.get("seconds") is None and run_kw.get("threshold") is None:
        raise ValueError("mcts needs a budget (candidates), seconds or a threshold to stop")
    if run_kw.get("calibrate") == 0:
        raise ValueError("mcts needs calibrate > 0: its priors and values are z-scores against random candidates")
    seeds = [list(map(int, s))[:length] for s in (seeds or [])]
    options = {"branch": branch, "batch": batch, "c_puct": c_puct, "prior_temp": prior_temp, "rollout": rollout,
               "virtual_loss": virtual_loss, "seeds": seeds}
    with SearchRun(scorer, driver="mcts", options=options, length=length, **run_kw) as run:
        tree = _Tree.load(run.state) if run.state else _Tree.new(seeds)
        calib = run.calibration(length)
        idle = 0  # rounds that scored nothing new: every reachable leaf is already known
        # budget kept to complete the best prefix at the end (rollout "none" never completes one itself)
        reserve = (length - 1) * len(run.pool) if rollout == "none" else 0
        while not run.exhausted() and idle < 50 and (run.remaining() is None or run.remaining() > reserve):
            used = run.used
            rng = rng_from(tree.rng, [run.seed, 2])
            paths = [tree.select(c_puct, virtual_loss, length, rng) for _ in range(batch)]
            leaves = _unique([p[-1] for p in paths])
            growing = [leaf for leaf in leaves if len(leaf) < length and leaf not in tree.expanded]
            if growing:
                _expand(run, tree, growing, branch, prior_temp, length)
            values = _evaluate(run, tree, leaves, length, rollout, calib, rng)
            for path in paths:
                tree.backup(path, values[path[-1]], virtual_loss)
            tree.iteration += 1
            tree.rng = rng.bit_generator.state
            idle = idle + 1 if run.used == used else 0
            run.checkpoint(tree.dump())
        if rollout == "none":
            _finish(run, tree, length, calib, rng_from(tree.rng, [run.seed, 2]))
        return run.write_results()


def _finish(run, tree, length, calib, rng) -> None:
    """Complete the best unfinished prefix (highest exact z) greedily, so a tree that spent its budget
    on short prefixes still reports full-length candidates."""
    open_nodes = [(z, node) for node, z in tree.z0.items() if len(node) < length]
    if open_nodes:
        best = max(open_nodes, key=lambda zn: (zn[0], len(zn[1]), zn[1]))[1]
    else:  # nothing expanded yet: the first seed, or the empty prefix
        best = tree.expanded.get((), ([()], None))[0][0]
    if len(best) < length:
        _evaluate(run, tree, [best], length, "greedy", calib, rng)


def _expand(run, tree, prefixes, branch, prior_temp, length):
    scores, values = run.score_extensions([list(p) for p in prefixes])
    n = len(run.pool)
    for row, prefix in enumerate(prefixes):
        v = values[row * n : (row + 1) * n].clone()
        v[run.over_repeat(prefix)] = -float("inf")
        top = torch.topk(v, min(branch, int(torch.isfinite(v).sum())))
        calib = run.calibration(len(prefix) + 1)
        z = (top.values.double().numpy() - calib.mean) / calib.std
        prior = np.exp((z - z.max()) / prior_temp)
        prior /= prior.sum()
        kids = [prefix + (int(run.pool[i]),) for i in top.indices]
        tree.expanded[prefix] = (kids, prior.tolist())
        for kid, zk in zip(kids, z.tolist()):
            tree.z0[kid] = zk
        if len(prefix) + 1 == length:
            idx = row * n + top.indices
            run.offer([list(c) for c in kids], scores[idx], values[idx], tree.iteration)
            for kid, x in zip(kids, top.values.tolist()):
                tree.terminal[kid] = float(x)


def _evaluate(run, tree, leaves, length, rollout, calib, rng) -> dict:
    """Value of each leaf: its exact z from expansion (rollout "none"), the terminal score, or the
    score of its rollout (z at full length)."""
    values, pending = {}, []
    for leaf in leaves:
        if len(leaf) == length and leaf in tree.terminal:
            values[leaf] = calib.z(tree.terminal[leaf])
        elif rollout == "none" and leaf in tree.z0:
            values[leaf] = tree.z0[leaf]
        else:
            pending.append(leaf)
    if not pending:
        return values
    if rollout == "none":  # seed prefixes: scored as they are, at their own length (the root is 0)
        if () in pending:
            values[()] = 0.0
            pending.remove(())
        if not pending:
            return values
        scores, own = run.score([list(p) for p in pending])
        for leaf, v in zip(pending, own.tolist()):
            tree.z0[leaf] = values[leaf] = run.calibration(len(leaf)).z(v)
            if len(leaf) == length:
                tree.terminal[leaf] = v
        full = [i for i, p in enumerate(pending) if len(p) == length]
        if full:
            run.offer([list(pending[i]) for i in full], scores[full], own[full], tree.iteration)
        return values
    seqs = [list(p) for p in pending]
    if rollout == "greedy":
        while any(len(s) < length for s in seqs):
            active = [s for s in seqs if len(s) < length]
            _, ext = run.score_extensions(active)
            ext = ext.view(len(active), -1)
            for s, row in zip(active, ext):
                row[run.over_repeat(s)] = -float("inf")
                s.append(int(run.pool[int(torch.argmax(row))]))
    else:
        for s in seqs:
            while len(s) < length:
                allowed = torch.nonzero(~run.over_repeat(s)).flatten()
                s.append(int(run.pool[allowed[rng.integers(0, len(allowed))]]))
    scores, final = run.score(seqs)
    run.offer(seqs, scores, final, tree.iteration)
    for leaf, v in zip(pending, final.tolist()):
        values[leaf] = calib.z(v)
        if len(leaf) == length:  # a full-length leaf (a seed) is scored once, then known
            tree.terminal[leaf] = v
    return values


def _unique(seqs):
    return list(dict.fromkeys(seqs))


class _Tree:
    """Visit counts N and value sums W per prefix; expanded nodes' children and priors."""

    def __init__(self):
        self.n: dict[tuple, float] = {}
        self.w: dict[tuple, float] = {}
        self.expanded: dict[tuple, tuple[list[tuple], list[float]]] = {}
        self.terminal: dict[tuple, float] = {}
        self.z0: dict[tuple, float] = {}  # exact z of a prefix at its own length, from its parent's expansion
        self.iteration = 0
        self.rng = None

    @classmethod
    def new(cls, seeds):
        tree = cls()
        if seeds:
            kids = _unique([tuple(s) for s in seeds])
            tree.expanded[()] = (kids, [1.0 / len(kids)] * len(kids))
        return tree

    def select(self, c_puct, virtual_loss, length, rng) -> list[tuple]:
        node, path = (), [()]
        self._visit(node, virtual_loss)
        while node in self.expanded and len(node) < length:
            kids, priors = self.expanded[node]
            parent_n = self.n.get(node, 0.0)
            best, best_u = None, -math.inf
            for kid, p in zip(kids, priors):
                n = self.n.get(kid, 0.0)
                q = self.w[kid] / n if n else self.z0.get(kid, 0.0)
                u = q + c_puct * p * math.sqrt(parent_n + 1.0) / (1.0 + n) + 1e-9 * rng.random()
                if u > best_u:
                    best, best_u = kid, u
            node = best
            path.append(node)
            self._visit(node, virtual_loss)
        return path

    def _visit(self, node, virtual_loss):
        """Virtual loss: count the visit now with a pessimistic value, undone in backup."""
        self.n[node] = self.n.get(node, 0.0) + 1.0
        self.w[node] = self.w.get(node, 0.0) - virtual_loss

    def backup(self, path, value, virtual_loss):
        for node in path:
            self.w[node] += virtual_loss + value

    def dump(self) -> dict:
        return {"iteration": self.iteration, "rng": self.rng,
                "stats": [[list(k), self.n[k], self.w[k]] for k in self.n],
                "expanded": [[list(k), [list(c) for c in kids], pr] for k, (kids, pr) in self.expanded.items()],
                "terminal": [[list(k), v] for k, v in self.terminal.items()],
                "z0": [[list(k), v] for k, v in self.z0.items()]}

    @classmethod
    def load(cls, state) -> "_Tree":
        tree = cls()
        tree.iteration, tree.rng = state["iteration"], state["rng"]
        for k, n, w in state["stats"]:
            tree.n[tuple(k)], tree.w[tuple(k)] = n, w
        for k, kids, pr in state["expanded"]:
            tree.expanded[tuple(k)] = ([tuple(c) for c in kids], pr)
        for k, v in state["terminal"]:
            tree.terminal[tuple(k)] = v
        for k, v in state.get("z0", []):
            tree.z0[tuple(k)] = v
        return tree
