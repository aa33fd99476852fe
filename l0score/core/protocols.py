"""The engine's interfaces: what the search drivers, the hunt and verify may rely on in a scorer, in the
scores it returns, in a backend and in an executor. docs/architecture.md ("Interfaces") says who
implements each and where a new one goes.

These are `typing.Protocol`s: an implementation does not inherit from them, it only has the members.
`isinstance(x, CandidateScorer)` checks that the members exist (not their signatures); the tests in
tests/test_protocols.py check the behaviour every implementation must share.
"""
from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import torch


@runtime_checkable
class CandidateScores(Protocol):
    """Per-candidate values of a scorer's metrics for a batch of B candidates."""

    def __len__(self) -> int: ...

    def metric(self, name: str) -> torch.Tensor:
        """Float tensor [B] of one of the scorer's `metrics` (higher = more changed)."""

    def record(self, b: int) -> dict:
        """What a search result keeps of candidate b, as JSON-ready values."""


@runtime_checkable
class CandidateScorer(Protocol):
    """One objective over candidates (sequences of token ids) that a search driver can maximise.

    Implemented by the Layer-0 `l0score.scorer.Scorer` (kind "layer0"), the full-model
    `l0score.judge.fullmodel.FullModelScorer` ("full") and the first-changed-module
    `l0score.first_module.FirstModuleScorer` (e.g. "mlp@L0").
    """

    kind: str  # the objective's name, recorded as `objective` in every search result
    metrics: tuple[str, ...]  # the names `scores.metric(name)` answers; an Objective weighs these

    def score_batch(self, token_ids) -> CandidateScores:
        """Score B candidates (a [B, c] tensor/array or a list of id lists of equal length)."""

    def score_extensions(self, prefixes, pool=None, side: str = "right") -> CandidateScores:
        """Every prefix extended by every pool token: P*K rows, prefix-major (row p*K + k), scored
        as `score_batch` would score them; `side="left"` prepends instead. pool defaults to
        `default_pool()`."""

    def default_pool(self) -> torch.Tensor:
        """Token ids a search may use: real tokens of the vocabulary (no specials, padding rows or
        chat-template pieces), int64 [K]."""

    def describe(self) -> dict:
        """JSON-ready settings of the objective, written next to search results."""


@runtime_checkable
class Backend(Protocol):
    """Computes the Layer-0 row statistics for a packed batch (l0score/backends/)."""

    name: str  # "torch", "native", "triton"

    def score_rows(self, batch, ctx, heads, region, baseline, offsets):
        """RowStats (l0score.core.types) of every row of `batch` in context `ctx`."""


@runtime_checkable
class ExtensionKernel(Protocol):
    """A backend with a dedicated kernel for one-token extensions (the native one). The scorer uses it
    when the backend implements this protocol and packs the extensions itself otherwise."""

    def extension_rows(self, pool, ctx, heads, region, baseline, offsets, earlier=None):
        """RowStats of [t] for every t in pool in context `ctx` (whose cached prefix ends with the
        candidate's first tokens), merged with `earlier` (those tokens' own rows); None when the
        kernel cannot run (e.g. no token table), and the scorer falls back to the general path."""


@runtime_checkable
class Executor(Protocol):
    """Where independent work runs. Callers choose it (the CLI from `--ray`, through
    `l0score.cluster.make_executor`); judge, search and hunt take `executor=` and only call it, so
    they never import `l0score.cluster`. `None` everywhere means: in this process.
    Implemented by `l0score.cluster.RayExecutor`."""

    def scorer(self, scorer: CandidateScorer) -> CandidateScorer:
        """The same scorer with its batches run by this executor (same values)."""

    def pair_shards(self, scorer, pool, heads, offsets, top, shifts) -> Iterable:
        """(head, [(values, query index, key index) per offset]) as each head's (head, offset) shards of
        an exact pair scan finish (search/pairs.py)."""

    def verify_batches(self, base, dormant, dtype, jobs, options, threads: int = 1) -> Iterable:
        """(job index, {"base": outputs, "dormant": outputs}) as verify's generation batches finish."""
