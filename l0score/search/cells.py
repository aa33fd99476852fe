"""Single Layer-0 cells against a whole token pool: which key tokens a given query token moves.

At Layer 0 a logit is a function of (query token a, key token t, offset r) only (docs/architecture.md#the-layer-0-score-exactly):

    dS_h(a, t, r) = [rot_r(q_dorm,h(a)) . k_dorm,g(t) - rot_r(q_base,h(a)) . k_base,g(t)] / sqrt(D) - baseline_h(r)

`KeyCells` keeps the pool's keys for the scorer's kv heads, so one row of the pair matrix (a few
queries against every key of the pool) costs a GEMV per head instead of a pair scan. Search uses it
to screen left extensions ([t] + fragment puts t before every token of the fragment, and the
general kernel that scores prepends exactly is many times slower than the extension kernel), and
the Layer-0 stage uses it to collect the tokens that pair with the analysis' seeds.
"""
from __future__ import annotations

import math

import torch

from ..core.reference import rope_angles, rotate

_LOOKUP_CHUNK = 8192  # pool rows looked up at a time (a lookup returns every head's queries too)


class KeyCells:
    def __init__(self, scorer, pool: torch.Tensor):
        cfg = scorer.pair.config
        self.scorer, self.cfg = scorer, cfg
        self.pool = torch.as_tensor(pool, dtype=torch.int64)
        self.heads = list(scorer.heads)
        self.kv = sorted({h // cfg.group for h in self.heads})
        self.baseline = scorer.baseline_table.cpu()
        kv_t = torch.tensor(self.kv)
        table = getattr(scorer, "table", None)
        if table is not None:  # straight from the token table: no query rows gathered
            kb = table.k_base[:, kv_t][self.pool.to(table.k_base.device)]
            kd = table.k_dorm[:, kv_t][self.pool.to(table.k_dorm.device)]
        else:
            kb, kd = [], []
            for start in range(0, len(self.pool), _LOOKUP_CHUNK):
                _, b, _, d = scorer.backend.lookup(self.pool[start:start + _LOOKUP_CHUNK].to(scorer.device))
                kb.append(b[:, kv_t])
                kd.append(d[:, kv_t])
            kb, kd = torch.cat(kb), torch.cat(kd)
        # [len(kv), N, D] float32, unrotated (position 0), contiguous per kv head for the GEMVs
        self.kb = kb.float().cpu().transpose(0, 1).contiguous()
        self.kd = kd.float().cpu().transpose(0, 1).contiguous()

    def rows(self, queries: list[tuple[int, int]]) -> torch.Tensor:
        """|dS| per scored head of every pool key against each (query token, offset): [len(queries), heads, N]."""
        cfg = self.cfg
        ids = torch.tensor([a for a, _ in queries], dtype=torch.int64)
        offsets = torch.tensor([r for _, r in queries], dtype=torch.int64)
        qb, _, qd, _ = self.scorer.backend.lookup(ids.to(self.scorer.device))
        qb, qd = qb.float().cpu(), qd.float().cpu()
        cos, sin = rope_angles(offsets, cfg.head_dim, cfg.rope_theta)
        out = torch.empty(len(queries), len(self.heads), len(self.pool))
        scale = 1.0 / math.sqrt(cfg.head_dim)
        for n, h in enumerate(self.heads):
            g = self.kv.index(h // cfg.group)
            q_d, q_b = rotate(qd[:, h], cos, sin), rotate(qb[:, h], cos, sin)  # [Q, D]
            vals = (q_d @ self.kd[g].T - q_b @ self.kb[g].T) * scale
            out[:, n] = (vals - self.baseline[n, offsets][:, None]).abs()
        return out

    def left_screen(self, fragment: list[int], k: int) -> torch.Tensor:
        """Pool indices of the tokens t whose cells with the fragment's tokens are largest when t is
        put in front: per head, the top k by max_j |dS_h(fragment[j], t, j + 1)|; the union over heads."""
        limit = self.cfg.max_positions - 1
        queries = [(int(a), j + 1) for j, a in enumerate(fragment) if j + 1 <= limit]
        best = self.rows(queries).amax(0)  # [heads, N]
        top = best.topk(min(k, best.shape[1]), dim=1).indices
        return torch.unique(top.flatten())

    def partners(self, tokens: list[int], offsets, k: int) -> list[tuple[float, int, int, int, int]]:
        """The k strongest cells with each token as the query: (|dS|, query, key, offset, head), best first."""
        queries = [(int(a), int(r)) for a in tokens for r in offsets]
        vals = self.rows(queries)  # [Q, heads, N]
        flat = vals.flatten()
        top = flat.topk(min(k, flat.numel()))
        n_heads, n = len(self.heads), len(self.pool)
        out = []
        for v, i in zip(top.values.tolist(), top.indices.tolist()):
            qi, rest = divmod(i, n_heads * n)
            hi, ki = divmod(rest, n)
            a, r = queries[qi]
            out.append((v, a, int(self.pool[ki]), r, self.heads[hi]))
        return out
