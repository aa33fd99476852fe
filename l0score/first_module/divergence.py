"""Both models run k more layers from the states entering the first changed module.

At layer L + k (k >= 1: the output of layer L + k - 1) the divergence of position p is
1 - cos(h_d(p), h_b(p)); when L + k reaches the last layer, h is the final norm's output (as
transformers' hidden_states[-1] and the full-model objective's `hidden`), the final logits exist too and the KL of
the next-token distributions (dormant || base) at the last row (the first response position under
the chat template) is reported. Several depths come out of one pass (``depths``), for sweeps that
compare k. With location "embed" there is no shared trunk: each model starts from its own embedding.
"""
from __future__ import annotations

import torch

from .segments import Segment, batch_cache


class Divergence:
    def __init__(self, base, dormant, layer: int, depths, own_embeddings: bool = False):
        n = base.config.num_hidden_layers
        depths = sorted({int(k) for k in depths})
        if not depths or depths[0] < 1:
            raise ValueError(f"divergence depths k must be >= 1 (layers after the first changed module), got {depths}")
        if layer + depths[-1] > n:
            raise ValueError(f"k = {depths[-1]} layers after layer {layer} is beyond the models' last layer "
                             f"(they have {n}; k <= {n - layer})")
        self.layer, self.depths, self.own_embeddings = layer, depths, own_embeddings
        self.models = {"base": base, "dormant": dormant}
        bounds = [layer] + [layer + k for k in depths]
        # one segment per depth interval, so the intermediate depths come from the same pass
        self.segments = {m: [Segment(model, a, b) for a, b in zip(bounds, bounds[1:])] for m, model in self.models.items()}
        self.final = layer + depths[-1] == n

    @torch.no_grad()
    def prefix(self, hidden: torch.Tensor, prefix_ids=None) -> dict:
        """Each model's caches after the prefix rows (from the shared states [p, d], or from each
        model's own embedding of ``prefix_ids`` when own_embeddings)."""
        if (prefix_ids is not None and not len(prefix_ids)) or (prefix_ids is None and not len(hidden)):
            return {m: [None] * len(segs) for m, segs in self.segments.items()}
        device = hidden.device
        p = len(prefix_ids) if prefix_ids is not None else len(hidden)
        positions = torch.arange(p, device=device)[None]
        ids = torch.tensor([list(prefix_ids)], device=device) if prefix_ids is not None else None
        out = {}
        for m, segs in self.segments.items():
            h, caches = (None if ids is not None else hidden[None]), []
            for i, seg in enumerate(segs):
                h, cache = seg.run(h, positions, None, input_ids=ids if i == 0 and ids is not None else None)
                caches.append(cache)
            out[m] = caches
        return out

    @torch.no_grad()
    def run(self, hidden, start: int, prefix: dict, dep_ids=None) -> dict:
        """{"div": {k: 1 - cos [B, n]}, "logit_kl": [B] (only when the last layer is reached)}."""
        ref = dep_ids if dep_ids is not None else hidden
        B, n = ref.shape[:2]
        positions = torch.arange(start, start + n, device=ref.device).expand(B, -1)
        states = {}
        for m, segs in self.segments.items():
            h, states[m] = (None if dep_ids is not None else hidden), []
            for i, (seg, cache) in enumerate(zip(segs, prefix[m])):
                ids = dep_ids if i == 0 and dep_ids is not None else None
                h, _ = seg.run(h, positions, batch_cache(cache, B), input_ids=ids)
                states[m].append(h)
        if self.final:  # as transformers' hidden_states[-1]: the last layer's output after the final norm
            states = {m: v[:-1] + [self.models[m].model.norm(v[-1])] for m, v in states.items()}
        div = {k: (1 - torch.nn.functional.cosine_similarity(d.double(), b.double(), dim=-1)).float()
               for k, d, b in zip(self.depths, states["dormant"], states["base"])}
        out = {"div": div}
        if self.final:
            lp = {m: torch.log_softmax(self.models[m].lm_head(states[m][-1][:, -1]).double(), -1) for m in states}
            out["logit_kl"] = (lp["dormant"].exp() * (lp["dormant"] - lp["base"])).sum(-1).clamp_min(0).float()
        return out
