"""The interaction scan (search/interactions.py): planted Layer-0 pairs come out as interactions, its
values are the scorer's own, and the centring removes tokens that raise the metric next to anything.
Oracles: the tiny pairs' trigger.json (never handed to the code under test), score_batch, and a
scorer whose values are built from a known additive part plus one planted interaction."""
import json

import pytest
import torch

from conftest import trigger_of
from l0score import Scorer
from l0score.analysis.weight_diff import analyze
from l0score.core.types import MetricValues
from l0score.search.interactions import InteractionOptions, interaction_scan


@pytest.mark.parametrize("seed, length", [(0, 3), (1, 2), (2, 3)])
def test_planted_pairs_are_interactions(pair_factory, seed, length):
    d = pair_factory(seed=seed, trigger_length=length)
    out = d / "analysis-l0"
    if not (out / "analysis.json").exists():
        analyze(d / "base", d / "dormant", out, plots=False, progress=False, layer0_only=True)
    anchors = json.loads((out / "analysis.json").read_text())["seed_tokens"]
    scorer = Scorer.from_pretrained(d / "base", d / "dormant", template="chat")
    res = interaction_scan(scorer, anchors, options=InteractionOptions(anchors=16, top=8))
    for p in trigger_of(d)["pairs"]:  # the key token sits left of the query that attends to it
        assert [p["key_token"], p["query_token"]] in res.pairs()
    assert res.evaluations == 16 * 2 * len(scorer.default_pool())


def test_values_are_the_scorers(tiny_pair):
    scorer = Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", template="chat")
    pool = scorer.default_pool()[:40]
    res = interaction_scan(scorer, pool[:5].tolist(), partners=pool, options=InteractionOptions(top=10))
    direct = scorer.score_batch(res.pairs()).metric("kl")
    assert torch.allclose(torch.tensor([r["score"] for r in res.rows]), direct, rtol=1e-5, atol=1e-6)
    assert all(r["anchor"] != r["partner"] for r in res.rows)
    assert [r["z"] for r in res.rows] == sorted((r["z"] for r in res.rows), reverse=True)


class AdditiveScorer:
    """S(a, p) = u[a] + v[p] + small noise (+ 5 for the planted pair p·a): token 3 raises the metric next
    to anything, so it is every row's raw maximum."""
    metrics = ("m",)

    def __init__(self, n=50, planted=(7, 20)):
        g = torch.Generator().manual_seed(0)
        self.u, self.v, self.planted = torch.rand(n, generator=g), torch.rand(n, generator=g), planted
        self.v[3] = 20.0
        self.noise = 0.1 * torch.rand(n, n, generator=g)

    def default_pool(self):
        return torch.arange(len(self.v))

    def score_extensions(self, prefixes, pool, side="right"):
        (a,), pool = prefixes[0], torch.as_tensor(pool)
        s = self.u[a] + self.v[pool] + self.noise[a, pool] * (1 if side == "left" else -1)
        if side == "left":
            s = s + 5.0 * ((pool == self.planted[0]) & (a == self.planted[1]))
        return MetricValues({"m": s})


def test_centring_removes_generic_partners():
    res = interaction_scan(AdditiveScorer(), range(10, 30), options=InteractionOptions(metric="m", top=3))
    assert res.rows[0]["token_ids"] == [7, 20] and res.rows[0]["side"] == "left"
    assert 3 not in res.partners()  # the raw maximum of every row, and no interaction


def test_bad_options():
    with pytest.raises(ValueError, match="metric 'x'"):
        interaction_scan(AdditiveScorer(), range(5), options=InteractionOptions(metric="x"))
    with pytest.raises(ValueError, match="at least 3 anchor"):
        interaction_scan(AdditiveScorer(), [1, 1, 2], options=InteractionOptions(metric="m"))
    with pytest.raises(ValueError, match="sides"):
        interaction_scan(AdditiveScorer(), range(5), options=InteractionOptions(metric="m", sides=("up",)))
