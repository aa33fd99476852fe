"""The vocabulary sweep: every token alone at the candidate slot, ranked by the first changed module.

Each token of the pool (default: every real token, the chat template's structural tokens and special
tokens excluded) is placed as the whole user message of the chat template and scored by the
first-module scorer in batches: the module's own difference at the token's position (mlp_cand; for
attention max_abs and head_max_sum over the cells the token takes part in) and, for each depth k,
1 - cos of the two models' hidden states at the token's position k layers past the first change
(``div{k}``). For a full fine-tune (location "embed") both models run their first k layers from
their own embeddings. Long sweeps checkpoint their partial results and resume.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..core.template import Template
from .ranking import Rankings
from .scorer import FirstModuleScorer

MODULE_KEYS = {"mlp": ("mlp_cand", "mlp_max"), "attn": ("max_abs", "head_max_sum", "kl"), "embed": ()}


@dataclass
class SweepOptions:
    """depths: the k of the divergence rankings (() = module difference only) [(1, 2, 3, 4)]
    pool: token ids to sweep [every real token, template-structural and special tokens excluded]
    batch_size: tokens per forward [256]
    own_position_only: for MLP and embedding locations, rank by the token's own position only and
        leave the template's suffix out: by causality the values there are exactly the same, and the
        sweep runs one row per token instead of 1 + suffix [True]
    checkpoint: file for partial results (resumed when ``resume``) [None]; checkpoint_every: seconds [30]
    """

    depths: tuple[int, ...] = (1, 2, 3, 4)
    pool: tuple[int, ...] | None = None
    batch_size: int = 256
    own_position_only: bool = True
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: float = 30.0
    resume: bool = False


@dataclass
class SweepResult(Rankings):
    """token_ids [N] and values {ranking: [N]} (Rankings), plus how the sweep ran."""

    location: str = ""
    seconds: float = 0.0  # of this run (a resumed run: only the part it did)
    swept: int = 0  # tokens scored by this run
    options: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.swept / self.seconds if self.seconds > 0 else float("nan")


def sweep(scorer: FirstModuleScorer, options: SweepOptions | None = None, progress=None) -> SweepResult:
    """Sweep the pool through ``scorer`` (its location and template; chat: the token is the user's
    message). progress(done, total) is called after every batch."""
    o = options or SweepOptions()
    if o.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {o.batch_size}")
    view = scorer.with_depths(o.depths) if o.depths else scorer
    own = o.own_position_only and scorer.location.module != "attn"
    if own:
        view = view.with_template(Template(view.template.prefix_ids, (), name=view.template.name + "-own"))
    if not o.depths and scorer.location.module == "embed":
        raise ValueError("location 'embed' (a full fine-tune) has no module difference: give depths k >= 1")
    pool = scorer.default_pool() if o.pool is None else torch.as_tensor(list(o.pool), dtype=torch.long)
    if pool.ndim != 1 or not len(pool):
        raise ValueError("the sweep pool must be a non-empty list of token ids")
    names = _names(scorer.location.module, tuple(sorted(set(o.depths))), own)
    described = {"location": scorer.kind, "template": view.describe()["template"], "depths": sorted(set(o.depths)),
                 "pool": _digest(pool)}
    values, done = _start(o, described, names, len(pool))
    start, last_save, swept = time.monotonic(), time.monotonic(), 0
    while done < len(pool):
        chunk = pool[done:done + o.batch_size]
        scores = view.score_batch(chunk[:, None])
        for name in names:
            values[name][done:done + len(chunk)] = scores.metric(_metric_of(name, view))
        done, swept = done + len(chunk), swept + len(chunk)
        if o.checkpoint and (time.monotonic() - last_save >= o.checkpoint_every or done == len(pool)):
            _save(o.checkpoint, described, values, done)
            last_save = time.monotonic()
        if progress is not None:
            progress(done, len(pool))
    return SweepResult(pool, values, scorer.kind, time.monotonic() - start, swept,
                       {**{k: v for k, v in asdict(o).items() if k != "pool"}, **described})


def _names(module: str, depths: tuple[int, ...], own: bool) -> list[str]:
    keys = [k for k in MODULE_KEYS[module] if not (own and k == "mlp_max")]  # mlp_max needs the suffix rows
    return keys + [f"div{k}" for k in depths]


def _metric_of(name: str, view: FirstModuleScorer) -> str:
    """The scorer's metric behind a ranking name (the deepest k is the view's own div_cand)."""
    if name.startswith("div"):
        return "div_cand" if int(name[3:]) == view.options.k else f"{name}_cand"
    return name


def _digest(pool: torch.Tensor) -> list[int]:
    """What a checkpoint must match of the pool: its size and a cheap fingerprint."""
    return [len(pool), int(pool.sum()), int((pool * torch.arange(len(pool))).sum() % (1 << 61))]


def _start(o: SweepOptions, described: dict, names: list[str], n: int) -> tuple[dict, int]:
    path = Path(o.checkpoint) if o.checkpoint else None
    if path is None or not path.exists():
        return {name: torch.zeros(n) for name in names}, 0
    if not o.resume:
        raise ValueError(f"{path} holds a sweep's partial results: resume it, or remove the file to start over")
    saved = torch.load(path, weights_only=True)
    if saved["described"] != described:
        raise ValueError(f"{path} was written by a sweep with other settings ({saved['described']}); "
                         "remove it or sweep with the same location, template, depths and pool")
    return saved["values"], int(saved["done"])


def _save(path, described: dict, values: dict, done: int) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"described": described, "values": values, "done": done}, tmp)
    os.replace(tmp, path)
