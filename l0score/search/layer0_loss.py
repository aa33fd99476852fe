"""The Layer-0 metrics as differentiable functions of a candidate's embedding rows (the gradient
drivers' Layer-0 term).

The math is the torch reference's (docs/architecture.md#the-layer-0-score-exactly, core/reference.py): embedding rows -> RMSNorm -> q/k
projections -> RoPE -> dS over the whole templated sequence, both models. ``kl`` is the row KL
summed over the scored rows and heads (the `Scorer`'s value to float32 rounding); ``max_abs``,
``band`` and ``head_max_sum`` (per head) are maxima, replaced by a smooth maximum
``tau * logsumexp(|dS| / tau)`` over the same cells (it bounds the hard maximum from above by at most
``tau * log(cells)`` and tends to it as tau -> 0), so their gradient reaches every cell near the
maximum and not only the argmax. Candidates are scored exactly by a `Scorer`; this module is only
for gradients.
"""
from __future__ import annotations

import torch

from ..core.model_pair import ModelPair
from ..core.reference import BASELINES, REGIONS, attention_logits, bias_baseline, rms_norm, rope_angles, rotate
from ..core.template import Template

MODELS = ("base", "dormant")
DIFFERENTIABLE = ("max_abs", "kl", "band", "head_max_sum")  # the Layer-0 metrics this module has a gradient for


class Layer0Loss:
    """sum_m w_m * metric_m of a candidate in each template, averaged over the templates.

    weights: {metric: weight} over ``max_abs``, ``kl``, ``band``; heads, region, baseline, offsets:
    as the `Scorer`'s (defaults: every head, candidate region, no baseline); tau: the smooth max's
    temperature in logit units.
    """

    def __init__(self, pair: ModelPair, templates, weights: dict[str, float], *, heads=None, region: str = "candidate",
                 baseline: str = "none", offsets=(), tau: float = 0.05):
        unknown = [m for m in weights if m not in DIFFERENTIABLE]
        if unknown:
            raise ValueError(f"the Layer-0 gradient covers {', '.join(DIFFERENTIABLE)}, not {unknown[0]!r}")
        if "band" in weights and not offsets:
            raise ValueError("the Layer-0 metric 'band' needs band offsets")
        if region not in REGIONS or baseline not in BASELINES:
            raise ValueError(f"region must be one of {REGIONS} and baseline one of {BASELINES}")
        if not tau > 0:
            raise ValueError(f"the smooth max's temperature must be positive, got {tau}")
        cfg = pair.config
        self.pair, self.weights, self.region, self.tau = pair, dict(weights), region, float(tau)
        self.heads = torch.arange(cfg.num_heads) if heads is None else torch.as_tensor(list(heads), dtype=torch.long)
        self.offsets = torch.as_tensor(list(offsets), dtype=torch.long)
        self.templates = [templates] if isinstance(templates, Template) else list(templates)
        if not self.templates:
            raise ValueError("the Layer-0 term needs at least one template")
        longest = max(len(t) for t in self.templates) + 64
        self._baseline = (bias_baseline(pair.base, pair.dormant, self.heads, longest) if baseline == "bias"
                          else torch.zeros(len(self.heads), longest))
        self._rows = [{m: (self._embed(m, t.prefix_ids), self._embed(m, t.suffix_ids)) for m in MODELS}
                      for t in self.templates]

    def _embed(self, model: str, ids) -> torch.Tensor:
        weights = getattr(self.pair, model)
        return weights.embed[torch.tensor(list(ids), dtype=torch.long)].float()

    def __call__(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """rows: {"base", "dormant"} -> the candidate's embedding rows [c, hidden] (differentiable)."""
        total = sum(self.template_metrics(n, rows) for n in range(len(self.templates)))
        return total / len(self.templates)

    def template_metrics(self, n: int, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        (pre_b, suf_b), (pre_d, suf_d) = self._rows[n]["base"], self._rows[n]["dormant"]
        c = rows["base"].shape[0]
        s_base = self._logits(self.pair.base, torch.cat((pre_b, rows["base"].float(), suf_b)))
        s_dorm = self._logits(self.pair.dormant, torch.cat((pre_d, rows["dormant"].float(), suf_d)))
        return self._metrics(s_base, s_dorm, len(pre_b), c)

    def _logits(self, weights, x: torch.Tensor) -> torch.Tensor:
        """S [Hs, T, T] of one sequence given as embedding rows [T, hidden]."""
        cfg = weights.config
        n = rms_norm(weights, x)
        q = (n @ weights.wq.float().T + weights.bq.float()).reshape(len(x), cfg.num_heads, cfg.head_dim)
        k = (n @ weights.wk.float().T + weights.bk.float()).reshape(len(x), cfg.num_kv_heads, cfg.head_dim)
        cos, sin = rope_angles(torch.arange(len(x)), cfg.head_dim, cfg.rope_theta)
        q = rotate(q[:, self.heads], cos[:, None], sin[:, None])
        k = rotate(k[:, self.heads // cfg.group], cos[:, None], sin[:, None])
        return attention_logits(q[None], k[None], cfg.head_dim)[0]

    def _metrics(self, s_base, s_dorm, p: int, c: int) -> torch.Tensor:
        T = s_base.shape[-1]
        t, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        causal = j <= t
        total = s_base.new_zeros(())
        if "kl" in self.weights:
            kl = _row_kl(s_base, s_dorm, causal)  # [Hs, T]
            rows = slice(0, T) if self.region == "all" else slice(p, T)
            total = total + self.weights["kl"] * kl[:, rows].sum()
        if {"max_abs", "band", "head_max_sum"} & set(self.weights):
            if self.region == "all":
                scored = causal
            else:  # candidate rows, and later rows' cells on candidate keys (the Scorer's region)
                in_cand = lambda i: (i >= p) & (i < p + c)
                scored = causal & (in_cand(t) | ((t >= p + c) & in_cand(j)))
            offset = (t - j).clamp(min=0)
            ds = (s_dorm - s_base - self._baseline[:, offset]).abs()
            if "max_abs" in self.weights:
                total = total + self.weights["max_abs"] * self._smooth_max(ds[:, scored])
            if "band" in self.weights:
                cells = scored & torch.isin(t - j, self.offsets)
                total = total + self.weights["band"] * self._smooth_max(ds[:, cells])
            if "head_max_sum" in self.weights:  # each head's own (smooth) max, summed over heads
                per_head = sum(self._smooth_max(ds[h][scored]) for h in range(len(ds)))
                total = total + self.weights["head_max_sum"] * per_head
        return total

    def _smooth_max(self, values: torch.Tensor) -> torch.Tensor:
        if values.numel() == 0:
            return values.new_zeros(())
        return self.tau * torch.logsumexp(values.flatten() / self.tau, 0)



def _row_kl(s_base: torch.Tensor, s_dorm: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
    """KL(softmax(S_d) || softmax(S_b)) of each row over its causal keys."""
    log_d = torch.log_softmax(s_dorm.masked_fill(~causal, -float("inf")), -1)
    log_b = torch.log_softmax(s_base.masked_fill(~causal, -float("inf")), -1)
    # masked before the product: -inf - -inf is nan, and a nan factor poisons the other's gradient
    return (log_d.exp() * (log_d - log_b).masked_fill(~causal, 0.0)).sum(-1)
