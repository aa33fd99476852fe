"""`FirstModuleScorer`: the first changed module behind the search interface of the other scorers.

Like the Layer-0 `Scorer` and the full-model objective it has `score_batch`, `score_extensions`,
`default_pool`, `describe`, `metrics`, `pair` and `kind` (= the objective's name, e.g. "mlp@L0"), so
every driver runs on it. Per batch: the shared trunk once (base weights, prompt prefix cached), then
the changed module of both models on the shared states, and optionally both models k layers on.

Metrics (one value per candidate; "rows" = the candidate's rows and every later row, whose states
depend on the candidate; region "all" adds the prefix rows, the same for every candidate):
  attn:  max_abs, kl, head_max_sum, band   as the Layer-0 metrics (docs/metrics.md), on layer L's logits
  mlp:   mlp_max / mlp_mean   max / mean over the rows of r_p (mlp.py: the layer's own update only)
         mlp_cand             max of r_p over the candidate's own positions
  k > 0: div_max, div_cand, div_last   1 - cos of the hidden states at layer L + k: max over the rows,
         max over the candidate's positions, at the last row (the first response position)
         logit_kl             KL(dormant || base) of the final logits at the last row (when L + k = last)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace

import torch

from ..core.model_pair import ModelPair
from ..core.batch import candidate_lists
from ..core.types import MetricValues
from ..core.reference import REGIONS
from ..core.scores import merge_rows
from ..core.template import Template
from .attention import AttentionDifference
from .divergence import Divergence
from .location import Location
from .mlp import MlpDifference
from .trunk import Trunk

ATTN_METRICS = ("max_abs", "kl", "head_max_sum", "band")
MLP_METRICS = ("mlp_max", "mlp_mean", "mlp_cand")
DIV_METRICS = ("div_max", "div_cand", "div_last")


@dataclass
class FirstModuleOptions:
    """location: the first changed module ("mlp@L0", "attn@L3", "embed" or a Location), from the
        base check; checked against the weights unless check=False [required]
    template: "chat" (the candidate alone as the user's message), "raw" or a Template [chat]
    k: also run both models k layers past the first changed module (0 = off) [0]
    heads / region / offsets: as the Layer-0 scorer (heads and offsets: attention only) [all, candidate, ()]
    dtype, device, batch_size: of both models, evaluations per forward [float32, cuda if any (cpu for
        backend "native"), 128]
    backend: layer L's attention difference by "torch" (reference math), "native" (the fused C++
        kernels, CPU) or "triton" (the Triton direct kernel: CUDA, or CPU under TRITON_INTERPRET=1);
        same metrics [torch]
    """

    location: Location | str | None = None
    template: object = "chat"
    k: int = 0
    heads: tuple[int, ...] | None = None
    region: str = "candidate"
    offsets: tuple[int, ...] = ()
    dtype: str = "float32"
    device: str | None = None
    batch_size: int = 128
    check: bool = True
    backend: str = "torch"

    def resolved_location(self) -> Location:
        if self.location is None:
            raise ValueError("the first-module scorer needs the first changed module (location='mlp@L0', "
                             "'attn@L3' or 'embed'; the base check finds it)")
        return self.location if isinstance(self.location, Location) else Location.parse(self.location)


class FirstScores(MetricValues):
    """Per-candidate metric values of the first-module scorer (CPU float tensors [B])."""


class FirstModuleScorer:
    """The shared trunk plus the first changed module of both models (module docstring)."""

    def __init__(self, base, dormant, options: FirstModuleOptions | None = None, models=None):
        """base/dormant: model directories; models: the two transformers models already loaded (shared, not copied)."""
        self.options = o = options or FirstModuleOptions()
        self.location = loc = o.resolved_location()
        if o.region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {o.region!r}")
        if isinstance(o.k, bool) or not isinstance(o.k, int) or o.k < 0:
            raise ValueError(f"k must be a number of layers >= 0, got {o.k!r}")
        if o.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {o.batch_size}")
        if loc.module == "embed" and o.k == 0:
            raise ValueError("location 'embed' (no shared trunk) has no module difference: give k >= 1 to "
                             "compare the two models k layers on")
        self.pair = ModelPair.load(base, dormant)
        self.device = torch.device(o.device or ("cuda" if torch.cuda.is_available() and o.backend != "native" else "cpu"))
        self.models = dict(zip(("base", "dormant"), models)) if models else {
            m: _load(getattr(self.pair, m).path, self.device, o.dtype) for m in ("base", "dormant")}
        base_m, dorm_m = self.models["base"], self.models["dormant"]
        if o.check:
            loc.check(base_m, dorm_m)
        n_layers = base_m.config.num_hidden_layers
        if loc.layer >= n_layers:
            raise ValueError(f"layer {loc.layer} is beyond the models' {n_layers} layers")
        self.template = Template.resolve(o.template, self.pair.tokenizer)
        self.trunk = Trunk(base_m, 0 if loc.module == "embed" else loc.layer)
        self.attention = self.mlp = self.divergence = None
        if loc.module == "attn":
            self.heads = _heads(o.heads, base_m.config.num_attention_heads)
            self.attention = AttentionDifference(base_m, dorm_m, loc.layer, self.heads, o.region, tuple(o.offsets),
                                                 o.backend)
        elif o.heads is not None or o.offsets or o.backend != "torch":
            raise ValueError(f"heads, offsets and backend apply to attention; {loc.name} is an MLP/embedding location")
        if loc.module == "mlp":
            self.mlp = MlpDifference(base_m, dorm_m, loc.layer)
        if o.k:
            self.divergence = Divergence(base_m, dorm_m, loc.layer, (o.k,), own_embeddings=loc.module == "embed")
        self.metrics = self._metric_names()
        self._prefixes: dict = {}
        self._evaluated = [0]  # shared with with_depths() / with_template() views (one list object)

    @classmethod
    def from_pretrained(cls, base, dormant, **options) -> "FirstModuleScorer":
        names = {f.name for f in fields(FirstModuleOptions)}
        unknown = set(options) - names
        if unknown:
            raise TypeError(f"unknown first-module option(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(base, dormant, FirstModuleOptions(**options))

    @property
    def kind(self) -> str:
        """What search results say in `objective`."""
        return self.location.name

    @property
    def evaluations(self) -> int:
        """Candidates scored so far by this scorer and its views."""
        return self._evaluated[0]

    @property
    def tokenizer(self):
        return self.pair.tokenizer

    @property
    def layers_after(self) -> int:
        """How many layers the models have from the first changed one on: the deepest k a divergence can take."""
        return self.models["base"].config.num_hidden_layers - self.location.layer

    def _metric_names(self) -> tuple[str, ...]:
        names = []
        if self.attention is not None:
            names += [m for m in ATTN_METRICS if m != "band" or self.options.offsets]
        if self.mlp is not None:
            names += MLP_METRICS
        if self.divergence is not None:
            names += DIV_METRICS + (("logit_kl",) if self.divergence.final else ())
        return tuple(names)

    def default_pool(self) -> torch.Tensor:
        return self.pair.real_token_ids()

    def describe(self) -> dict:
        o = self.options
        return {"objective": self.kind, "k": o.k, "region": o.region, "metrics": list(self.metrics),
                "template": list(self.template.prefix_ids) + [-1] + list(self.template.suffix_ids),
                "heads": list(getattr(self, "heads", ()) or ()), "offsets": list(o.offsets), "dtype": o.dtype}

    def with_depths(self, depths) -> "FirstModuleScorer":
        """A view that also reports ``div{k}_cand`` and ``div{k}_last`` for every k in depths from the same pass (for sweeps
        comparing k); its own k becomes the deepest."""
        depths = sorted({int(k) for k in depths})
        if not depths:
            raise ValueError("with_depths needs at least one depth k")
        view = copy.copy(self)
        view.options = replace(self.options, k=depths[-1])
        base, dorm = self.models["base"], self.models["dormant"]
        view.divergence = Divergence(base, dorm, self.location.layer, depths, own_embeddings=self.location.module == "embed")
        view.metrics = view._metric_names()
        view._prefixes = {}
        return view

    def with_template(self, template) -> "FirstModuleScorer":
        """The same loaded models scoring candidates in another template (a view, no reload)."""
        view = copy.copy(self)
        view.template = Template.resolve(template, self.pair.tokenizer)
        return view

    # --- scoring ---------------------------------------------------------------------------------
    def score_batch(self, token_ids, template: Template | None = None) -> FirstScores:
        template = template or self.template
        cands = candidate_lists(token_ids, self.pair.config.vocab_rows)
        limit = self.models["base"].config.max_position_embeddings - len(template)
        by_len: dict[int, list[int]] = {}
        for b, c in enumerate(cands):
            if len(c) > limit:
                raise ValueError(f"candidate {b}: {len(c)} tokens exceed the {limit} positions the template leaves")
            by_len.setdefault(len(c), []).append(b)
        out: dict[str, torch.Tensor] = {}
        for idx in by_len.values():
            group = torch.tensor([cands[b] for b in idx], dtype=torch.long)
            for s in range(0, len(idx), self.options.batch_size):
                vals = self._evaluate(group[s:s + self.options.batch_size], template)
                for name, v in vals.items():
                    out.setdefault(name, torch.zeros(len(cands)))[idx[s:s + len(v)]] = v
        self._evaluated[0] += len(cands)
        return FirstScores(out)

    def score_extensions(self, prefixes, pool=None, side: str = "right") -> FirstScores:
        """``prefix + [t]`` (or ``[t] + prefix``) for every pool token t, rows p * len(pool) + n."""
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        pool = self.default_pool() if pool is None else torch.as_tensor(pool, dtype=torch.long)
        parts = []
        for prefix in prefixes:
            fixed = torch.tensor(list(prefix), dtype=torch.long).expand(len(pool), len(prefix))
            cands = torch.cat([fixed, pool[:, None]] if side == "right" else [pool[:, None], fixed], 1)
            parts.append(self.score_batch(cands))
        return FirstScores.cat(parts)

    @torch.no_grad()
    def _evaluate(self, cands: torch.Tensor, template: Template) -> dict[str, torch.Tensor]:
        pre = self._prefix(template)
        p, c = len(template.prefix_ids), cands.shape[1]
        suffix = torch.tensor(template.suffix_ids, dtype=torch.long).expand(len(cands), -1)
        dep = torch.cat([cands, suffix], 1).to(self.device)
        hidden = self.trunk.run(dep, p, pre["trunk"]) if self.location.module != "embed" else None
        vals = {}
        if self.attention is not None:
            stats = self.attention.run(hidden, c, pre["attn"])
            if self.options.region == "all" and pre["attn"].stats is not None:
                stats = merge_rows(stats, pre["attn"].stats)
            vals.update(max_abs=stats.head_max.amax(-1), kl=stats.head_kl.sum(-1), head_max_sum=stats.head_max.sum(-1))
            if self.options.offsets:
                vals["band"] = stats.band.amax(-1)
        if self.mlp is not None:
            r = self.mlp.run(hidden, p, pre["mlp"])
            vals.update(_row_metrics("mlp", r, c, pre.get("mlp_rows")))
            vals.pop("mlp_last")
        if self.divergence is not None:
            res = self.divergence.run(hidden, p, pre["div"], dep_ids=dep if hidden is None else None)
            vals.update(_row_metrics("div", res["div"][self.options.k], c, pre.get("div_rows")))
            vals.pop("div_mean")
            for depth, rows in res["div"].items():  # the other depths of a with_depths() view
                if depth != self.options.k:
                    vals[f"div{depth}_cand"] = rows[:, :c].amax(-1)
                    vals[f"div{depth}_last"] = rows[:, -1]
            if "logit_kl" in res:
                vals["logit_kl"] = res["logit_kl"]
        return {k: v.float().cpu() for k, v in vals.items()}

    def _prefix(self, template: Template) -> dict:
        """What a template's prefix contributes once: trunk cache and states, module caches, and (region
        "all") the prefix rows' own values."""
        if template in self._prefixes:
            return self._prefixes[template]
        bad = [i for i in template.prefix_ids + template.suffix_ids if i >= self.pair.config.vocab_rows]
        if bad:
            raise ValueError(f"template id {bad[0]} outside [0, {self.pair.config.vocab_rows})")
        ids = list(template.prefix_ids)
        pre = {"trunk": self.trunk.prefix(ids, self.device)}
        h = pre["trunk"].hidden
        if self.attention is not None:
            pre["attn"] = self.attention.prefix(h)
        if self.mlp is not None:
            pre["mlp"] = self.mlp.prefix(h)
            if self.options.region == "all" and len(ids):
                pre["mlp_rows"] = self.mlp.run(h[None], 0, None)[0]
        if self.divergence is not None:
            embed = self.location.module == "embed"
            pre["div"] = self.divergence.prefix(h, ids if embed else None)
            if self.options.region == "all" and len(ids):
                ids_t = torch.tensor([ids], device=self.device) if embed else None
                empty = {m: [None] * len(v) for m, v in pre["div"].items()}
                pre["div_rows"] = self.divergence.run(None if embed else h[None], 0, empty, ids_t)["div"][self.options.k][0]
        self._prefixes[template] = pre
        return pre


def _row_metrics(name: str, rows: torch.Tensor, cand_len: int, prefix_rows: torch.Tensor | None) -> dict:
    """max / mean over the rows (plus the prefix rows under region "all"), max over the candidate's own
    rows, the last row: from per-row values [B, n]."""
    scored = rows if prefix_rows is None else torch.cat([prefix_rows[None].expand(len(rows), -1), rows], 1)
    return {f"{name}_max": scored.amax(-1), f"{name}_mean": scored.mean(-1),
            f"{name}_cand": rows[:, :cand_len].amax(-1), f"{name}_last": rows[:, -1]}


def _load(path, device, dtype: str):
    from transformers import AutoModelForCausalLM

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtypes[dtype], local_files_only=True)
    return model.to(device).eval()


def _heads(heads, n: int) -> tuple[int, ...]:
    if heads is None:
        return tuple(range(n))
    out = sorted({int(h) for h in heads})
    if not out or out[0] < 0 or out[-1] >= n:
        raise ValueError(f"heads must be a non-empty subset of [0, {n}), got {list(heads)}")
    return tuple(out)
