"""Gradient-guided coordinate search (HotFlip / GCG, after nanoGCG) on either scorer.

Each step takes the gradient of the loss with respect to the one-hot choice of every candidate
token (token_gradient.py: one backward pass through both models), keeps the ``topk`` pool tokens
with the largest gradient at each position, samples ``batch`` candidates that swap ``n_replace``
positions to one of those tokens, scores them exactly with the scorer, and moves to the best of
them (even when it is worse than the current candidate, as GCG does; the best ever seen is kept
in the results). The gradient only proposes; every kept value is exact.

What is maximised, ``alpha * (Layer-0 metric) + (1 - alpha) * (output objective)``:

* on the Layer-0 `Scorer` there are no full models: the run's objective (max_abs, kl, band) is the
  Layer-0 term and alpha is 1; its gradient comes from layer0_loss.py (kl exact, maxima smoothed);
* on the `FullModelScorer` the output objective is the run's objective over the scorer's metrics
  (kl, js, tf_kl, hidden, target, target_seq; judge/output_loss.py gives its gradient) and alpha
  (default 0) mixes in ``layer0_metric`` of the candidate in the same prompts, averaged over them,
  scored exactly by a Layer-0 `Scorer` (torch backend) and differentiated through the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from .beam import _check_length
from .objective import Objective
from .pool import roundtrips
from .run import SearchRun, rng_from
from .layer0_loss import Layer0Loss
from .token_gradient import token_gradient


@dataclass
class GCGOptions:
    """Options of `gcg` (defaults in brackets; nanoGCG's names where they exist).

    length: candidate tokens [8]
    steps: gradient steps per restart [100] (the run's budget and seconds also stop it)
    topk: replacement tokens kept per position from the gradient [32] (nanoGCG topk)
    batch: swapped candidates scored exactly per step [64] (nanoGCG search_width); when it covers
        every (position, top-k token) pair and n_replace is 1, all of them are scored
    n_replace: positions changed per swapped candidate [1]
    restarts: independent starts, each from random pool tokens (or a seed) [1]
    alpha: weight of the Layer-0 term [None: 1 on the Layer-0 scorer, 0 on the full-model scorer]
    layer0_metric: the Layer-0 term on the full-model scorer: max_abs, kl, band or a weighted sum ["kl"]
    tau: temperature of the smooth max standing in for max_abs/band in the gradient [0.05]
    seeds: start candidates (prefixes), one per restart, each at a random place among random tokens [()]
    """

    length: int = 8
    steps: int = 100
    topk: int = 32
    batch: int = 64
    n_replace: int = 1
    restarts: int = 1
    alpha: float | None = None
    layer0_metric: str = "kl"
    tau: float = 0.05
    seeds: tuple = ()

    def validate(self) -> None:
        _check_length(self.length)
        for name in ("steps", "topk", "batch", "restarts"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.n_replace, int) or not 1 <= self.n_replace <= self.length:
            raise ValueError(f"n_replace must be between 1 and the length {self.length}, got {self.n_replace!r}")
        if self.alpha is not None and not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")


@dataclass
class GCGResult:
    """Ranked results (the JSONL rows, best first) and what the run cost."""

    results: list[dict]
    steps: int  # gradient steps taken, over all restarts
    evaluations: int  # candidates scored exactly
    seconds: float
    options: GCGOptions = field(repr=False, default=None)

    @property
    def best(self) -> dict | None:
        return self.results[0] if self.results else None


def gcg(scorer, options: GCGOptions | None = None, **kw) -> GCGResult:
    """Run GCG on a scorer. Keywords naming a `GCGOptions` field override ``options``; the rest go
    to `SearchRun` (objective, pool, out, budget, seconds, threshold, resume, seed, max_repeat, ...)."""
    names = {f.name for f in fields(GCGOptions)}
    opts = replace(options or GCGOptions(), **{k: kw.pop(k) for k in list(kw) if k in names})
    opts.validate()
    seeds = [[int(t) for t in s][: opts.length] for s in opts.seeds]
    full = getattr(scorer, "kind", "layer0") == "full"
    alpha = float(opts.alpha) if opts.alpha is not None else (0.0 if full else 1.0)
    if not full and alpha != 1.0:
        raise ValueError(f"alpha = {alpha} mixes in an output loss, which needs the full-model objective "
                         "(the Layer-0 scorer has no full models; use alpha = 1 or --objective full)")
    logged = {"steps": opts.steps, "topk": opts.topk, "batch": opts.batch, "n_replace": opts.n_replace,
              "restarts": opts.restarts, "alpha": alpha, "layer0_metric": opts.layer0_metric if full else None,
              "tau": opts.tau, "seeds": seeds}
    with SearchRun(scorer, driver="gcg", options=logged, length=opts.length, **kw) as run:
        search = _Search(run, opts, alpha, full, seeds)
        search.loop()
        results = run.write_results()
        return GCGResult(results, search.state["total_steps"], run.used, run.elapsed, opts)


class _Search:
    """One GCG run's loss, exact evaluation and step loop over a SearchRun."""

    def __init__(self, run: SearchRun, opts: GCGOptions, alpha: float, full: bool, seeds):
        self.run, self.opts, self.alpha, self.full, self.seeds = run, opts, alpha, full, seeds
        self.scorer, self.pool = run.scorer, run.pool
        weights = _weights(run.objective)
        if not full and hasattr(self.scorer, "location"):  # the first-module scorer: its own gradient
            from .first_module_loss import FirstModuleLoss

            self.layer0, self.output = FirstModuleLoss(self.scorer, weights, tau=opts.tau), None
        elif not full:
            s = self.scorer
            self.layer0 = Layer0Loss(s.pair, [s.template], weights, heads=s.heads, region=s.region,
                                     baseline=s.baseline_kind, offsets=s.offsets, tau=opts.tau)
            self.output = None
        else:
            from ..judge.output_loss import OutputLoss

            l0_objective = Objective.parse(opts.layer0_metric)
            self.output = OutputLoss(self.scorer, weights) if alpha < 1 else None
            self.layer0 = (Layer0Loss(self.scorer.pair, self.scorer.contexts, _weights(l0_objective), tau=opts.tau)
                           if alpha > 0 else None)
            self.layer0_exact = _Layer0Exact(self.scorer, l0_objective) if alpha > 0 else None
        self.state = run.state or {"restart": 0, "step": 0, "total_steps": 0, "seq": None,
                                   "rng": rng_from(None, [run.seed, 12]).bit_generator.state}

    # --- the loop ------------------------------------------------------------------------------
    def loop(self) -> None:
        run, state = self.run, self.state
        run.checkpoint(state)
        while state["restart"] < self.opts.restarts and not run.exhausted():
            rng = rng_from(state["rng"], [run.seed, 12])
            if state["seq"] is None:
                seq = self._start(rng)
                self._score([seq], state["total_steps"])
                state.update(seq=seq, step=0)
            elif state["step"] >= self.opts.steps or not self._step(rng):
                state.update(restart=state["restart"] + 1, seq=None)
            state["rng"] = rng.bit_generator.state
            run.bar.set_description(f"gcg {state['restart'] + 1}/{self.opts.restarts} step {state['step']}")
            run.checkpoint(state)

    def _start(self, rng: np.random.Generator) -> list[int]:
        seq = self.pool[rng.integers(0, len(self.pool), self.opts.length)].tolist()
        r = self.state["restart"]
        if r < len(self.seeds):  # like coord: a seed goes in at a random place among random tokens
            seed = self.seeds[r]
            at = int(rng.integers(0, self.opts.length - len(seed) + 1))
            seq[at:at + len(seed)] = seed
        return seq

    def _step(self, rng: np.random.Generator) -> bool:
        """One gradient step from state["seq"]; False when no swap is left to try."""
        seq = list(self.state["seq"])
        _, grad = token_gradient(lambda rows: self._loss(rows, seq), self.scorer.pair, seq, self.pool)
        cands = self._propose(seq, grad, rng)
        if not cands:
            return False
        self.state["total_steps"] += 1
        self.state["step"] += 1
        self.state["seq"] = cands[self._score(cands, self.state["total_steps"])]
        return True

    # --- gradient and proposals -----------------------------------------------------------------
    def _loss(self, rows, seq) -> torch.Tensor:
        total = 0.0
        if self.layer0 is not None:
            total = total + self.alpha * self.layer0(rows)
        if self.output is not None:
            total = total + (1 - self.alpha) * self.output(rows, seq)
        return total

    def _propose(self, seq: list[int], grad: torch.Tensor, rng: np.random.Generator) -> list[list[int]]:
        """Candidates that swap n_replace positions to top-k gradient tokens (pool tokens only)."""
        grad = grad.clone()
        pool, run = self.pool, self.run
        for pos in range(len(seq)):
            grad[pos, pool == seq[pos]] = -float("inf")  # a swap must change the token
            grad[pos, run.over_repeat(seq[:pos] + seq[pos + 1:])] = -float("inf")
        k = min(self.opts.topk, len(pool))
        vals, idx = torch.topk(grad, k, dim=1)
        options = [[int(pool[i]) for v, i in zip(vals[p].tolist(), idx[p].tolist()) if v > -float("inf")]
                   for p in range(len(seq))]
        pairs = [(p, t) for p in range(len(seq)) for t in options[p]]
        if self.opts.n_replace == 1 and self.opts.batch >= len(pairs):
            cands = [seq[:p] + [t] + seq[p + 1:] for p, t in pairs]
        else:
            cands = [self._sample(seq, options, rng) for _ in range(self.opts.batch)]
        if run.roundtrip == "search":
            cands = [c for c in cands if roundtrips(self.scorer.pair.tokenizer, c)]
        seen, out = {tuple(seq)}, []
        for c in cands:
            if c is not None and tuple(c) not in seen:
                seen.add(tuple(c))
                out.append(c)
        return out

    def _sample(self, seq, options, rng) -> list[int] | None:
        usable = [p for p in range(len(seq)) if options[p]]
        if not usable:
            return None
        cand = list(seq)
        for p in rng.choice(usable, min(self.opts.n_replace, len(usable)), replace=False).tolist():
            cand[p] = options[p][int(rng.integers(0, len(options[p])))]
        if self.run.max_repeat is not None and np.unique(cand, return_counts=True)[1].max() > self.run.max_repeat:
            return None  # several swaps together can exceed the repeat cap that each alone respects
        return cand

    # --- exact evaluation -----------------------------------------------------------------------
    def _score(self, cands: list[list[int]], step: int) -> int:
        """Score exactly and offer to the results; the index of the best."""
        # The full-model scorer reuses the KV cache of what a batch shares: score swaps of one
        # position together, so each group shares every token before that position.
        current = self.state["seq"]
        groups = _by_first_change(cands, current) if self.full and current else [list(range(len(cands)))]
        values = torch.empty(len(cands))
        for idx in groups:
            group = [cands[i] for i in idx]
            scores, vals = self.run.score(group)
            if self.full and self.alpha > 0:
                l0 = self.layer0_exact(group)
                vals = self.alpha * l0 + (1 - self.alpha) * vals
                scores = _WithLayer0(scores, l0)
            self.run.offer(group, scores, vals, step, top=8)
            values[idx] = vals
        return int(torch.argmax(values))


class _Layer0Exact:
    """The Layer-0 term's exact value: its objective on a Layer-0 Scorer, mean over the prompts."""

    def __init__(self, scorer, objective: Objective):
        from ..scorer import Scorer

        self.templates = list(scorer.contexts)
        self.objective = objective
        self.scorer = Scorer(scorer.pair, backend="torch", template=self.templates[0], table=False)

    def __call__(self, cands) -> torch.Tensor:
        total = sum(self.objective(self.scorer.score_batch(cands, template=t)).float().cpu() for t in self.templates)
        return total / len(self.templates)


@dataclass
class _WithLayer0:
    """A scorer's scores plus the Layer-0 term, so the results record both."""

    scores: object
    layer0: torch.Tensor

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, idx) -> "_WithLayer0":
        return _WithLayer0(self.scores[idx], self.layer0[idx])

    def metric(self, name: str) -> torch.Tensor:
        return self.scores.metric(name)

    def record(self, b: int) -> dict:
        return {**self.scores.record(b), "layer0": float(self.layer0[b])}


def _weights(objective: Objective) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, w in objective.weights:
        out[name] = out.get(name, 0.0) + w
    return out


def _by_first_change(cands: list[list[int]], seq) -> list[list[int]]:
    """Indices of cands grouped by the first position where they differ from seq."""
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(cands):
        first = next((p for p, (a, b) in enumerate(zip(c, seq)) if a != b), len(c))
        groups.setdefault(first, []).append(i)
    return [groups[k] for k in sorted(groups)]
