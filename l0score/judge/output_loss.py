"""The full-model objective's metrics as differentiable functions of a candidate's embedding rows.

`FullModelScorer` scores candidates exactly (token ids, KV cache reuse, no gradients). A gradient
driver needs the same metrics with the candidate given as embedding rows instead (``inputs_embeds``:
one-hot x embedding matrix, each model its own): `OutputLoss` runs both models over every context of
the scorer (probe x placement) with the candidate's rows in place of its ids and returns the weighted
metrics combined over contexts as the scorer combines them (mean, or each metric's minimum with
reduce="min"), with the graph to the rows. Values equal the scorer's:

* kl, js, target: `first_position_metrics` at the first response position;
* tf_kl: the dormant's greedy reply to the current candidate is fixed first (no gradient), then both
  models are teacher-forced on it and the KL summed over its first ``reply_tokens`` positions;
* target_seq: the target string teacher-forced after the prompt, mean log-probability difference;
* hidden: 1 - cos of the hidden states at the last prompt position, mean over ``hidden_layers``.
"""
from __future__ import annotations

import torch

from .fullmodel import FULL_METRICS, first_position_metrics


class OutputLoss:
    """sum_m w_m * metric_m of a candidate, each metric over the scorer's contexts by its reduce
    (differentiable)."""

    def __init__(self, scorer, weights: dict[str, float]):
        unknown = [m for m in weights if m not in FULL_METRICS]
        if unknown:
            raise ValueError(f"the output loss knows {', '.join(FULL_METRICS)}, not {unknown[0]!r}")
        missing = [m for m in weights if m not in scorer.metrics]
        if missing:
            raise ValueError(f"metric {missing[0]!r} is not computed by this full-model scorer "
                             f"(it computes {', '.join(scorer.metrics)})")
        self.scorer, self.weights = scorer, dict(weights)
        self.options = scorer.options

    def __call__(self, rows: dict[str, torch.Tensor], cand: list[int]) -> torch.Tensor:
        """rows: {"base", "dormant"} -> embedding rows [c, hidden] of the candidate whose ids are cand."""
        per_context = [self.context_metrics(ci, rows, cand) for ci in range(len(self.scorer.contexts))]
        reduce = torch.amin if self.options.reduce == "min" else torch.mean
        return sum(w * reduce(torch.stack([c[name] for c in per_context]), 0) for name, w in self.weights.items())

    def context_metrics(self, ci: int, rows: dict[str, torch.Tensor], cand: list[int]) -> dict[str, torch.Tensor]:
        """Each weighted metric's value (unweighted, a 0-d tensor) in context ci."""
        ctx = self.scorer.contexts[ci]
        prompt = list(ctx.prefix_ids) + list(cand) + list(ctx.suffix_ids)
        n = len(prompt)
        w, o = self.weights, self.options
        first = [m for m in ("kl", "js", "target", "hidden") if m in w]
        out = {}
        runs = []  # (extra tokens teacher-forced after the prompt, metrics read from that forward)
        if "tf_kl" in w:
            runs.append((self._greedy_reply(prompt, o.reply_tokens)[:-1], first + ["tf_kl"]))
            first = []
        if "target_seq" in w:
            runs.append((list(o.target_seq)[:-1], first + ["target_seq"]))
            first = []
        if first:
            runs.append(([], first))
        for extra, names in runs:
            lp, hidden = self._forward(ctx, rows, extra, "hidden" in names)
            lp_d, lp_b = lp["dormant"][n - 1:], lp["base"][n - 1:]
            vals = first_position_metrics(lp_d[:1], lp_b[:1], names, o.target_ids, o.target_weight)
            if "hidden" in names:
                cos = [torch.nn.functional.cosine_similarity(hidden["dormant"][layer][n - 1],
                                                             hidden["base"][layer][n - 1], dim=-1)
                       for layer in o.hidden_layers]
                vals["hidden"] = (1 - torch.stack(cos)).mean()
            if "tf_kl" in names:
                vals["tf_kl"] = (lp_d.exp() * (lp_d - lp_b)).sum(-1).clamp_min(0.0).sum()
            if "target_seq" in names:
                ids = torch.tensor(list(o.target_seq))[:, None]
                mean_lp = {m: x[:len(ids)].gather(-1, ids)[:, 0].mean() for m, x in (("dormant", lp_d), ("base", lp_b))}
                vals["target_seq"] = mean_lp["dormant"] - o.target_weight * mean_lp["base"]
            out.update({name: vals[name].reshape(()) for name in names})
        return out

    def _forward(self, ctx, rows, extra, hidden: bool):
        """Both models over prefix + candidate rows + suffix + extra: log-probs [T, V] (float64)."""
        lp, hs = {}, {}
        for m, model in self.scorer.models.items():
            emb = model.get_input_embeddings()
            ids = lambda seq: torch.tensor(list(seq), dtype=torch.long, device=self.scorer.device)
            dev_rows = rows[m].to(self.scorer.device, emb.weight.dtype)
            x = torch.cat((emb(ids(ctx.prefix_ids)), dev_rows, emb(ids(list(ctx.suffix_ids) + list(extra)))))
            out = model(inputs_embeds=x[None], use_cache=False, output_hidden_states=hidden)
            lp[m] = torch.log_softmax(out.logits[0].double(), -1).cpu()
            if hidden:
                hs[m] = {layer: out.hidden_states[layer][0].double().cpu() for layer in self.options.hidden_layers}
        return lp, hs

    @torch.no_grad()
    def _greedy_reply(self, prompt: list[int], k: int) -> list[int]:
        """The dormant's first k greedy reply tokens to the prompt (what tf_kl teacher-forces)."""
        model = self.scorer.models["dormant"]
        seq = torch.tensor([prompt], device=self.scorer.device)
        reply = []
        for _ in range(k):
            nxt = model(input_ids=seq, use_cache=False).logits[0, -1].argmax()
            reply.append(int(nxt))
            seq = torch.cat((seq, nxt.view(1, 1)), 1)
        return reply
