"""The full-model objective: both complete models score candidates placed in probe prompts.

`FullModelScorer` has the Layer-0 `Scorer`'s search interface (`score_batch`, `score_extensions`,
`default_pool`, `pair`, `describe`), so every driver runs on either (docs/architecture.md#stages). A candidate is placed
in each probe prompt exactly as `verify` places it (`prompts.placement`), and every metric compares
the dormant with the base on the same prompt, averaged over probes and placements:

* ``kl``      KL(dormant || base) of the next-token distributions at the first response position;
* ``js``      Jensen-Shannon divergence there;
* ``tf_kl``   KL summed over the first ``reply_tokens`` positions of the dormant's own greedy reply,
              both models teacher-forced on it;
* ``hidden``  1 - cos of the two models' hidden states at the last prompt position, mean over
              ``hidden_layers`` (0 = embeddings, -1 = the final norm's output);
* ``target``  log sum_{t in T} p_dormant(t) - target_weight * log sum_{t in T} p_base(t) at the first
              response position, for a user-given token set T (``target_ids``);
* ``target_seq`` mean log p_dormant(t_k | ...) - target_weight * mean log p_base(t_k | ...) over a
              target string's tokens, teacher-forced after the prompt (the reply one wants to cause).

Speed: the prompt part before the candidate, plus the longest prefix that a batch's candidates
share (a beam prefix, or the positions before the one coordinate ascent varies), is run once per
model and its KV cache reused by the whole batch; each evaluation runs only the candidate's
remaining tokens and the rest of the prompt. ``cache=False`` runs every prompt whole (for checks
and the benchmark).
"""
from __future__ import annotations

import copy
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, fields, replace

import torch

from ..core.model_pair import ModelPair
from ..core.batch import candidate_lists
from ..core.types import MetricValues
from .models import load_model, resolve_dtype, run_model
from .prompts import DEFAULT_PROBES, POSITIONS, placement, read_probes_file, read_system_prompts

FULL_METRICS = ("kl", "js", "tf_kl", "hidden", "target", "target_seq")
REDUCTIONS = ("mean", "min")  # how a metric combines over contexts (probes x placements)


@dataclass
class FullModelOptions:
    """Options of the full-model objective (defaults in brackets).

    probes: probe prompts, or a path to a file with one per line [the first 3 of verify's defaults]
    positions: candidate placements averaged over ["before", "after"]
    metrics: what to compute; an objective may only use these [kl, js, hidden]; tf_kl, target and
        target_seq are added automatically when reply_tokens / target_ids / target_seq are set
    reply_tokens: k of tf_kl [0 = off]
    hidden_layers: hidden states compared by ``hidden`` [(-1,)]
    target_ids / target_seq / target_weight: the token set T, the target string's ids, lambda [1.0]
    dtype, device: of both models ["float32", cuda if available else cpu]
    reduce: how each metric combines over the contexts (probes x placements): "mean", or "min", the
        worst context, so that only a candidate that moves every probe in every placement scores
        high, as a trigger does (a string that games one placement of the chat template does not) [mean]
    batch_size: evaluations per forward call [64]
    cache: reuse the prompt-prefix KV cache [True]
    system, sep: as in verify (the chat template's own system prompt; " " before, "\\n" after)
    system_prompts: several system prompts instead of one (a list, or a file with one a line;
        ``<default>``/None the template's own, ``<empty>`` an empty one): every probe x placement under
        each, so the objective combines (mean or min) over systems x probes x placements [None]
    """

    probes: tuple[str, ...] | str | None = None
    positions: tuple[str, ...] = POSITIONS
    metrics: tuple[str, ...] = ("kl", "js", "hidden")
    reply_tokens: int = 0
    hidden_layers: tuple[int, ...] = (-1,)
    target_ids: tuple[int, ...] = ()
    target_seq: tuple[int, ...] = ()
    target_weight: float = 1.0
    dtype: str = "float32"
    device: str | None = None
    reduce: str = "mean"
    batch_size: int = 64
    cache: bool = True
    system: str | None = None
    sep: str | None = None
    system_prompts: tuple | str | None = None

    def resolved_probes(self) -> list[str]:
        if self.probes is None:
            return list(DEFAULT_PROBES[:3])
        if isinstance(self.probes, (str, os.PathLike)):
            return read_probes_file(self.probes)
        probes = [str(p) for p in self.probes]
        if not probes or any(not p.strip() for p in probes):
            raise ValueError("probes must be a non-empty list of non-empty prompts")
        return probes

    def resolved_metrics(self) -> tuple[str, ...]:
        wanted = list(self.metrics)
        for name, on in (("tf_kl", self.reply_tokens > 0), ("target", bool(self.target_ids)),
                         ("target_seq", bool(self.target_seq))):
            if on and name not in wanted:
                wanted.append(name)
        for name in wanted:
            if name not in FULL_METRICS:
                raise ValueError(f"unknown full-model metric {name!r}; choose from {', '.join(FULL_METRICS)}")
        needs = {"tf_kl": ("reply_tokens > 0", self.reply_tokens > 0), "target": ("target_ids", bool(self.target_ids)),
                 "target_seq": ("target_seq", bool(self.target_seq))}
        for name, (what, ok) in needs.items():
            if name in wanted and not ok:
                raise ValueError(f"metric {name!r} needs {what}")
        return tuple(wanted)


@dataclass
class ContextRun:
    """One context's forward of both models: log-probs from the first response position on
    [B, 1 + extra, V] (float64, CPU), hidden states at the last prompt position, the KV caches."""

    logprobs: dict[str, torch.Tensor]
    hidden: dict[str, list[torch.Tensor]]
    caches: dict[str, object]
    next_position: int


class FullScores(MetricValues):
    """Per-candidate values of the full-model metrics (CPU float tensors [B])."""


class FullModelScorer:
    """Both complete models behind the search interface of the Layer-0 `Scorer`."""

    kind = "full"
    metrics: tuple[str, ...]  # the metrics this scorer computes (options.metrics plus what the options imply)

    def __init__(self, base, dormant, options: FullModelOptions | None = None, progress: bool = False):
        self.options = options or FullModelOptions()
        self.metrics = self.options.resolved_metrics()
        self.probes = self.options.resolved_probes()
        positions = (self.options.positions,) if isinstance(self.options.positions, str) else self.options.positions
        if not positions or any(p not in POSITIONS for p in positions):
            raise ValueError(f"positions must be a non-empty subset of {POSITIONS}, got {positions!r}")
        if self.options.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.options.batch_size}")
        _check_reduce(self.options.reduce)
        self.pair = ModelPair.load(base, dormant)  # Layer-0 checks, tokenizer, real/special ids
        tok = self.pair.tokenizer
        if tok is None or not getattr(tok, "chat_template", None):
            raise ValueError(f"{self.pair.dormant.path}: the full-model objective places candidates through "
                             "the chat template, and this tokenizer has none")
        self.device = torch.device(self.options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = resolve_dtype(self.options.dtype)
        self.models = {m: load_model(getattr(self.pair, m).path, self.device, dtype) for m in ("base", "dormant")}
        self.systems = read_system_prompts(self.options.system, self.options.system_prompts)
        self.contexts = [placement(tok, probe, pos, self.options.sep, system)
                         for system in self.systems for probe in self.probes for pos in positions]
        self.positions = tuple(positions)
        self._check_context_lengths()
        self._check_targets()
        self._cache: OrderedDict = OrderedDict()
        self.evaluations = 0  # prompts run through both models

    @classmethod
    def from_pretrained(cls, base, dormant, **options) -> "FullModelScorer":
        names = {f.name for f in fields(FullModelOptions)}
        unknown = set(options) - names
        if unknown:
            raise TypeError(f"unknown full-model option(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(base, dormant, FullModelOptions(**options))

    def with_options(self, **changes) -> "FullModelScorer":
        """The same loaded models under other objective options (e.g. a target string): a view that
        shares the models, not a second copy of them. Probes and placements stay."""
        fixed = {"probes", "positions", "dtype", "device", "system", "sep", "system_prompts"} & set(changes)
        if fixed:
            raise ValueError(f"with_options cannot change {sorted(fixed)}: load another FullModelScorer")
        view = copy.copy(self)
        view.options = replace(self.options, **changes)
        view.metrics = view.options.resolved_metrics()
        _check_reduce(view.options.reduce)
        view._check_targets()
        return view

    def narrowed(self, probes: int = 1, position: str = "after") -> "FullModelScorer":
        """The same loaded models on fewer contexts: the first system prompt, the first ``probes`` probes,
        one placement. A cheap screen for the exhaustive search (search/exhaustive.py): a trigger moves
        the dormant in every context, so one context ranks it high at a fraction of the cost."""
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise ValueError(f"probes must be a count >= 1, got {probes!r}")
        view = copy.copy(self)
        view.probes, view.positions, view.systems = self.probes[:probes], (position,), self.systems[:1]
        view.contexts = [placement(self.tokenizer, p, position, self.options.sep, view.systems[0]) for p in view.probes]
        view._cache = OrderedDict()  # its keys are context indices, which differ from this scorer's
        return view

    # --- the search interface -----------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.pair.tokenizer

    def default_pool(self) -> torch.Tensor:
        """Real, non-special token ids (padding rows and special tokens excluded)."""
        return self.pair.real_token_ids()

    def describe(self) -> dict:
        """What a checkpoint must match to be resumed: the objective's own settings."""
        o = self.options
        return {"objective": "full", "probes": self.probes, "positions": list(self.positions),
                "metrics": list(self.metrics), "reply_tokens": o.reply_tokens, "hidden_layers": list(o.hidden_layers),
                "target_ids": list(o.target_ids), "target_seq": list(o.target_seq), "target_weight": o.target_weight,
                "reduce": o.reduce,
                "dtype": o.dtype, "system": o.system, "sep": o.sep,
                **({"systems": self.systems} if o.system_prompts is not None else {})}

    def score_batch(self, token_ids) -> FullScores:
        cands = candidate_lists(token_ids, self.pair.config.vocab_rows)
        by_len: dict[int, list[int]] = {}
        for b, c in enumerate(cands):
            by_len.setdefault(len(c), []).append(b)
        out = {m: torch.zeros(len(cands), dtype=torch.float64) for m in self.metrics}
        for idx in by_len.values():
            group = torch.tensor([cands[b] for b in idx], dtype=torch.long)
            for name, v in self._score_group(group).items():
                out[name][idx] = v
        return FullScores({k: v.float() for k, v in out.items()})

    def score_extensions(self, prefixes, pool=None, side: str = "right") -> FullScores:
        """``prefix + [t]`` (side="right") or ``[t] + prefix`` (side="left") for every pool token t,
        rows flattened as p * len(pool) + n (like Scorer)."""
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        pool = self.default_pool() if pool is None else torch.as_tensor(pool, dtype=torch.long)
        parts = []
        for prefix in prefixes:
            fixed = torch.tensor(list(prefix), dtype=torch.long).expand(len(pool), len(prefix))
            cands = torch.cat([fixed, pool[:, None]] if side == "right" else [pool[:, None], fixed], 1)
            parts.append(self.score_batch(cands))
        return FullScores.cat(parts)

    # --- evaluation ---------------------------------------------------------------------------
    def _score_group(self, cands: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each metric over the contexts (mean or min, options.reduce) for equal-length candidates [B, c]."""
        per_context = {m: torch.zeros(len(self.contexts), len(cands), dtype=torch.float64) for m in self.metrics}
        for ci in range(len(self.contexts)):
            for s in range(0, len(cands), self.options.batch_size):
                vals = self._evaluate(ci, cands[s:s + self.options.batch_size])
                for m in self.metrics:
                    per_context[m][ci, s:s + len(vals[m])] = vals[m]
        if self.options.reduce == "min":
            return {m: v.min(0).values for m, v in per_context.items()}
        return {m: v.mean(0) for m, v in per_context.items()}

    @torch.no_grad()
    def _evaluate(self, ci: int, cands: torch.Tensor) -> dict[str, torch.Tensor]:
        """The metrics for each row of cands [B, c] in context ci."""
        tseq = list(self.options.target_seq)
        # The target string rides along in the same forward unless the reply KL needs the cache after the prompt.
        along = bool(tseq) and "tf_kl" not in self.metrics
        run = self.run_context(ci, cands, tseq[:-1] if along else [])
        lp_d, lp_b = run.logprobs["dormant"][:, 0], run.logprobs["base"][:, 0]
        vals = first_position_metrics(lp_d, lp_b, self.metrics, self.options.target_ids, self.options.target_weight)
        if "hidden" in self.metrics:
            cos = [torch.nn.functional.cosine_similarity(d, b, dim=-1) for d, b in zip(run.hidden["dormant"], run.hidden["base"])]
            vals["hidden"] = (1 - torch.stack(cos)).mean(0)
        if "tf_kl" in self.metrics:
            vals["tf_kl"] = self._reply_kl(lp_d, lp_b, run.caches, run.next_position)
        if tseq:
            lp = run.logprobs if along else self.run_context(ci, cands, tseq[:-1]).logprobs
            ids = torch.tensor(tseq).expand(len(cands), -1)[..., None]
            mean_lp = {m: lp[m][:, :len(tseq)].gather(-1, ids)[..., 0].mean(-1) for m in lp}
            vals["target_seq"] = mean_lp["dormant"] - self.options.target_weight * mean_lp["base"]
        self.evaluations += len(cands)
        return {k: v.cpu() for k, v in vals.items()}

    @torch.no_grad()
    def run_context(self, ci: int, cands: torch.Tensor, extra=()) -> "ContextRun":
        """Both models over context ci's prompt around each row of cands [B, c] (equal lengths), then
        the ``extra`` tokens teacher-forced. The prompt before the candidates and the candidates'
        shared first tokens come from the prefix KV cache (when ``cache``)."""
        ctx = self.contexts[ci]
        B, c = cands.shape
        suffix = torch.tensor(ctx.suffix_ids, dtype=torch.long).expand(B, -1)
        extra = torch.tensor(list(extra), dtype=torch.long).expand(B, -1)
        if self.options.cache:
            shared = _common_prefix(cands)
            head, tails = list(ctx.prefix_ids) + cands[0, :shared].tolist(), torch.cat([cands[:, shared:], suffix], 1)
        else:
            prefix = torch.tensor(ctx.prefix_ids, dtype=torch.long).expand(B, -1)
            head, tails = [], torch.cat([prefix, cands, suffix], 1)
        n = tails.shape[1]
        inputs = torch.cat([tails, extra], 1).to(self.device)
        positions = torch.arange(len(head), len(head) + inputs.shape[1], device=self.device).expand(B, -1)
        run = ContextRun({}, {}, {}, len(head) + inputs.shape[1])
        for m, model in self.models.items():
            cache = self._prefix_cache(ci, m, head, B) if head else None
            keep = inputs.shape[1] - (n - 1)  # logits from the first response position on, not the prompt's
            res, run.caches[m] = run_model(model, inputs, cache, position_ids=positions, use_cache=True,
                                           output_hidden_states="hidden" in self.metrics, logits_to_keep=keep)
            run.logprobs[m] = torch.log_softmax(res.logits[:, -keep:].double(), -1).cpu()
            if "hidden" in self.metrics:
                run.hidden[m] = [res.hidden_states[layer][:, n - 1].double().cpu() for layer in self.options.hidden_layers]
        return run

    def _reply_kl(self, lp_d, lp_b, past, pos) -> torch.Tensor:
        """KL summed over the dormant's greedy reply's first k positions, both models teacher-forced."""
        kl = _kl(lp_d, lp_b)
        nxt = lp_d.argmax(-1)
        for _ in range(self.options.reply_tokens - 1):
            step = {}
            for m, model in self.models.items():
                res, past[m] = run_model(model, nxt[:, None].to(self.device), past[m], use_cache=True,
                                         position_ids=torch.full((len(nxt), 1), pos, device=self.device))
                step[m] = torch.log_softmax(res.logits[:, -1].double(), -1).cpu()
            kl = kl + _kl(step["dormant"], step["base"])
            nxt, pos = step["dormant"].argmax(-1), pos + 1
        return kl

    def _prefix_cache(self, ci: int, model: str, head: list[int], batch: int):
        """The KV cache after ``head``, copied for a batch. Kept in a small LRU; a head that extends
        the context's own prompt prefix (a candidate prefix) is computed from that prefix's cache."""
        key = (ci, model, tuple(head))
        if key not in self._cache:
            prefix = list(self.contexts[ci].prefix_ids)
            start, cache = 0, None
            if len(head) > len(prefix) and head[:len(prefix)] == prefix:
                start, cache = len(prefix), self._prefix_cache(ci, model, prefix, 1)
            ids = torch.tensor([head[start:]], device=self.device)
            with torch.no_grad():
                self._cache[key] = run_model(self.models[model], ids, cache, use_cache=True, logits_to_keep=1,
                                             position_ids=torch.arange(start, len(head), device=self.device)[None])[1]
            while len(self._cache) > 4 * len(self.contexts) + 2 * len(self.contexts):
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        cache = copy.deepcopy(self._cache[key])
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    def _check_context_lengths(self) -> None:
        limit = min(self.models[m].config.max_position_embeddings for m in self.models)
        room = self.options.reply_tokens + len(self.options.target_seq) + 8
        for ctx, probe in zip(self.contexts, [p for _ in self.systems for p in self.probes for _ in self.positions]):
            if len(ctx) + room > limit:
                raise ValueError(f"probe {probe[:60]!r}: the prompt is {len(ctx)} tokens, and with a candidate and "
                                 f"{room - 8} reply tokens it exceeds the models' context of {limit} positions")

    def _check_targets(self) -> None:
        vocab = self.pair.config.vocab_rows
        for name in ("target_ids", "target_seq"):
            bad = [t for t in getattr(self.options, name) if not 0 <= int(t) < vocab]
            if bad:
                raise ValueError(f"{name}: token id {bad[0]} outside [0, {vocab})")


def _check_reduce(reduce: str) -> None:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")


def first_position_metrics(lp_d, lp_b, metrics, target_ids=(), target_weight=1.0) -> dict[str, torch.Tensor]:
    """kl, js and target from log-probabilities [B, V] at the first response position (differentiable)."""
    vals = {}
    if "kl" in metrics:
        vals["kl"] = _kl(lp_d, lp_b)
    if "js" in metrics:
        mid = torch.logaddexp(lp_d, lp_b) - math.log(2)
        vals["js"] = 0.5 * (_kl(lp_d, mid) + _kl(lp_b, mid))
    if "target" in metrics:
        ids = torch.as_tensor(list(target_ids), device=lp_d.device)
        vals["target"] = lp_d[:, ids].logsumexp(-1) - target_weight * lp_b[:, ids].logsumexp(-1)
    return vals


def _kl(lp_p, lp_q) -> torch.Tensor:
    return (lp_p.exp() * (lp_p - lp_q)).sum(-1).clamp_min(0.0)


def _common_prefix(cands: torch.Tensor) -> int:
    """Tokens every row shares at the start, leaving at least one token per row to run."""
    same = (cands == cands[:1]).all(0)
    n = int(same.long().cumprod(0).sum())
    return min(n, cands.shape[1] - 1)
