"""The first-module metrics as differentiable functions of a candidate's embedding rows (GCG's term).

The same computation as the scorer (trunk, then the changed module, optionally k layers on) over
the whole templated sequence with autograd on and no cache; maxima become the smooth maximum
tau * logsumexp(x / tau) as in the Layer-0 loss (search/layer0_loss.py, whose reductions the
attention case reuses on layer L's logits). Candidates are still scored exactly by the scorer; this
is only for gradients.
"""
from __future__ import annotations

import torch

from ..core.reference import attention_logits, rope_angles, rotate
from .layer0_loss import Layer0Loss

DIFFERENTIABLE = ("max_abs", "kl", "head_max_sum", "mlp_max", "mlp_mean", "mlp_cand", "div_max", "div_cand", "div_last")


class FirstModuleLoss:
    def __init__(self, scorer, weights: dict[str, float], tau: float = 0.05):
        bad = [m for m in weights if m not in DIFFERENTIABLE or m not in scorer.metrics]
        if bad:
            raise ValueError(f"no gradient for metric {bad[0]!r} of {scorer.kind}; differentiable here: "
                             f"{', '.join(m for m in DIFFERENTIABLE if m in scorer.metrics)}")
        if not tau > 0:
            raise ValueError(f"the smooth max's temperature must be positive, got {tau}")
        self.scorer, self.weights, self.tau = scorer, dict(weights), float(tau)
        t = scorer.template
        self.prefix, self.suffix = list(t.prefix_ids), list(t.suffix_ids)
        self.attn_reduce = None
        if scorer.attention is not None:  # Layer-0's reductions (region, heads) on layer L's logits
            self.attn_reduce = Layer0Loss(scorer.pair, [t], {m: w for m, w in weights.items() if m in ("max_abs", "kl", "head_max_sum")},
                                          heads=scorer.heads, region=scorer.options.region, tau=tau)

    def __call__(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        s, c, p = self.scorer, rows["base"].shape[0], len(self.prefix)
        x = {m: self._sequence(m, rows[m]) for m in rows}
        T = x["base"].shape[1]
        positions = torch.arange(T, device=s.device)[None]
        embed = s.location.module == "embed"
        h = x["base"] if s.trunk.segment is None else s.trunk.segment.forward(x["base"], positions, use_cache=False)[0]
        total = h.new_zeros(())
        if s.attention is not None:
            total = total + self._attention(h[0], p, c)
        if s.mlp is not None:
            mid = s.mlp.attention.forward(h, positions, use_cache=False)[0]
            (ln_b, mlp_b), (ln_d, mlp_d) = s.mlp.parts
            out_b, out_d = mlp_b(ln_b(mid)), mlp_d(ln_d(mid))
            r = ((out_d - out_b).norm(dim=-1) / out_b.norm(dim=-1).clamp_min(1e-30))[0]
            total = total + self._rows("mlp", r, p, c)
        if s.divergence is not None and any(m.startswith("div") for m in self.weights):
            states = {}
            for m, segs in s.divergence.segments.items():
                v = x[m] if embed else h
                for seg in segs:
                    v = seg.forward(v, positions, use_cache=False)[0]
                states[m] = s.divergence.models[m].model.norm(v) if s.divergence.final else v
            div = 1 - torch.nn.functional.cosine_similarity(states["dormant"][0], states["base"][0], dim=-1)
            total = total + self._rows("div", div, p, c)
        return total

    def _sequence(self, model: str, rows: torch.Tensor) -> torch.Tensor:
        emb = self.scorer.models[model].model.embed_tokens
        ids = lambda t: torch.tensor(t, dtype=torch.long, device=rows.device)
        return torch.cat([emb(ids(self.prefix)), rows.float(), emb(ids(self.suffix))])[None]

    def _rows(self, name: str, r: torch.Tensor, p: int, c: int) -> torch.Tensor:
        scored = r[p:] if self.scorer.options.region == "candidate" else r
        parts = {f"{name}_max": lambda: self._smooth_max(scored), f"{name}_mean": lambda: scored.mean(),
                 f"{name}_cand": lambda: self._smooth_max(r[p:p + c]), f"{name}_last": lambda: r[-1]}
        return sum(w * parts[m]() for m, w in self.weights.items() if m in parts)

    def _smooth_max(self, v: torch.Tensor) -> torch.Tensor:
        return self.tau * torch.logsumexp(v / self.tau, 0)

    def _attention(self, h: torch.Tensor, p: int, c: int) -> torch.Tensor:
        a = self.scorer.attention
        logits = []
        cos, sin = rope_angles(torch.arange(len(h), device=h.device), a.head_dim, a.theta)
        for which in (0, 1):
            q, k = a.project(h, which)
            q = rotate(q[:, a.heads], cos[:, None], sin[:, None])
            k = rotate(k[:, a.heads // a.group], cos[:, None], sin[:, None])
            logits.append(attention_logits(q[None], k[None], a.head_dim)[0])
        return self.attn_reduce._metrics(logits[0], logits[1], p, c)
