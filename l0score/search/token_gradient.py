"""The gradient of a loss with respect to the one-hot choice of each candidate token (HotFlip, GCG).

A candidate of c tokens enters each model as embedding rows x_m = onehot @ E_m, with onehot [c, V]
and E_m that model's embedding matrix (base and dormant have their own). So

    d loss / d onehot[i, v] = sum_m E_m[v] . (d loss / d x_m[i])

and one backward pass (to the rows) ranks every replacement token at every position: the loss is
evaluated once at the current candidate, the rows are the leaves, and the gradient over the
vocabulary is the rows' gradient times each embedding matrix, formed for the pool's tokens only
(in chunks, so a 152k-token vocabulary never needs a float32 copy of the embedding).
"""
from __future__ import annotations

import torch

MODELS = ("base", "dormant")
_CHUNK = 16384


def embedding_rows(pair, cand) -> dict[str, torch.Tensor]:
    """Each model's embedding rows of a candidate (float32 leaves that require grad)."""
    ids = torch.as_tensor(list(cand), dtype=torch.long)
    return {m: getattr(pair, m).embed[ids].float().requires_grad_() for m in MODELS}


def token_gradient(loss_fn, pair, cand, pool: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(loss at cand, d loss / d onehot [len(cand), len(pool)]) for loss_fn(rows) -> scalar tensor."""
    rows = embedding_rows(pair, cand)
    loss = loss_fn(rows)
    if not loss.requires_grad:  # a loss that does not depend on the candidate has a zero gradient
        return float(loss), torch.zeros(len(cand), len(pool))
    loss.backward()
    return float(loss.detach()), onehot_gradient(pair, {m: r.grad for m, r in rows.items()}, pool)


def onehot_gradient(pair, row_grads: dict[str, torch.Tensor], pool: torch.Tensor) -> torch.Tensor:
    """sum_m d loss/d x_m @ E_m[pool]^T: [c, len(pool)] from the rows' gradients [c, hidden]."""
    c = next(iter(row_grads.values())).shape[0]
    out = torch.zeros(c, len(pool))
    for m, g in row_grads.items():
        if g is None:
            continue
        embed = getattr(pair, m).embed
        for s in range(0, len(pool), _CHUNK):
            ids = pool[s:s + _CHUNK]
            out[:, s:s + len(ids)] += g.float() @ embed[ids].float().T
    return out
