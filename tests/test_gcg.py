"""search gcg: the one-hot gradient against finite differences, the differentiable losses against the
exact scorers, the driver's pool, determinism and resume, the planted trigger within coord's budget,
the hybrid loss on the full models, and clear errors for bad options."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import trigger_of
from l0score import Scorer
from l0score.search import coord, pair_scan, seeds_from_pairs
from l0score.search.gcg import gcg
from l0score.search.layer0_loss import Layer0Loss
from l0score.search.run import SearchRun
from l0score.search.token_gradient import MODELS, embedding_rows, token_gradient


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def full_scorer(tiny_pair):
    from l0score.judge.fullmodel import FullModelOptions, FullModelScorer

    opts = FullModelOptions(probes=("What is 7 plus 5?",), metrics=("kl", "js"), reply_tokens=3,
                            target_ids=(10, 20), target_seq=(40, 50, 60))
    return FullModelScorer(tiny_pair / "base", tiny_pair / "dormant", opts)


def layer0_scorer(pair_dir, **kw):
    return Scorer.from_pretrained(pair_dir / "base", pair_dir / "dormant", template="chat", backend="torch", **kw)


@pytest.mark.parametrize("region, baseline", [("candidate", "none"), ("all", "bias")])
def test_layer0_loss_equals_the_scorer(tiny_pair, region, baseline):
    scorer = layer0_scorer(tiny_pair, region=region, baseline=baseline, offsets=(1, 2))
    for cand in (trigger_of(tiny_pair)["trigger_ids"], [5, 6, 7, 8]):
        exact = scorer.score_batch([cand])
        rows = {m: r.detach() for m, r in embedding_rows(scorer.pair, cand).items()}
        kl = Layer0Loss(scorer.pair, [scorer.template], {"kl": 1}, region=region, baseline=baseline)(rows)
        assert float(kl) == pytest.approx(float(exact.kl[0]), rel=2e-3)
        for metric, value in (("max_abs", exact.max_abs[0]), ("band", exact.band[0].max())):
            loss = Layer0Loss(scorer.pair, [scorer.template], {metric: 1}, region=region, baseline=baseline,
                              offsets=(1, 2), tau=1e-3)
            # the smooth max lies above the max, by at most tau * log(cells)
            assert float(value) - 1e-5 <= float(loss(rows)) <= float(value) + 1e-3 * np.log(4 * 40 * 40) + 1e-5


def test_output_loss_equals_the_full_model_scorer(full_scorer):
    from l0score.judge.output_loss import OutputLoss

    cand = [5, 6, 7]
    exact = full_scorer.score_batch([cand])
    rows = {m: r.detach() for m, r in embedding_rows(full_scorer.pair, cand).items()}
    for name in ("kl", "js", "tf_kl", "target", "target_seq"):
        got = float(OutputLoss(full_scorer, {name: 1.0})(rows, cand).detach())
        assert got == pytest.approx(float(exact.metric(name)[0]), rel=2e-3, abs=1e-7), name
    worst = full_scorer.with_options(reduce="min")  # two placements: the loss takes each metric's minimum
    exact = worst.score_batch([cand])
    got = float(OutputLoss(worst, {"kl": 1.0, "target": 0.5})(rows, cand).detach())
    assert got == pytest.approx(float(exact.metric("kl")[0] + 0.5 * exact.metric("target")[0]), rel=2e-3, abs=1e-7)


def _finite_difference(loss_fn, pair, cand, pool, seed=0, h=1e-2):
    """Predicted (gradient . D) and measured (central difference) change of the loss along a
    continuous perturbation D of the one-hot [c, pool] (rows = (onehot + t D) @ E_m[pool]). D is a unit
    mix of the gradient's own direction and a random one, so that G . D is far above float32 noise."""
    _, grad = token_gradient(loss_fn, pair, cand, pool)
    onehot = (torch.tensor(cand)[:, None] == pool[None]).double()
    direction = torch.randn(onehot.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    direction = direction / direction.norm() + grad.double() / grad.double().norm()
    direction /= direction.norm()
    embed = {m: getattr(pair, m).embed[pool].double() for m in MODELS}

    def at(t):
        with torch.no_grad():
            return float(loss_fn({m: ((onehot + t * direction) @ embed[m]).float() for m in MODELS}))

    return float((grad.double() * direction).sum()), (at(h) - at(-h)) / (2 * h)


@pytest.mark.parametrize("metric", ["kl", "max_abs"])
def test_layer0_onehot_gradient_matches_finite_differences(tiny_pair, metric):
    scorer = layer0_scorer(tiny_pair)
    pool = torch.arange(3, 80)
    loss = Layer0Loss(scorer.pair, [scorer.template], {metric: 1}, tau=0.5)
    for seed, cand in enumerate(([5, 9, 30], trigger_of(tiny_pair)["trigger_ids"][:2] + [7])):
        pool_c = torch.unique(torch.cat((pool, torch.tensor(cand))))
        predicted, measured = _finite_difference(loss, scorer.pair, cand, pool_c, seed)
        assert predicted == pytest.approx(measured, rel=2e-2, abs=1e-4)


@pytest.mark.parametrize("metric", ["js", "tf_kl", "target"])
def test_output_onehot_gradient_matches_finite_differences(full_scorer, metric):
    from l0score.judge.output_loss import OutputLoss

    cand, pool = [5, 9, 30], torch.arange(3, 60)
    loss = OutputLoss(full_scorer, {metric: 1.0})
    predicted, measured = _finite_difference(lambda rows: loss(rows, cand), full_scorer.pair, cand, pool)
    assert predicted == pytest.approx(measured, rel=3e-2, abs=1e-6)
    assert abs(predicted) > 1e-5  # the check is not vacuous


def test_gcg_proposes_pool_tokens_only_and_is_deterministic(tiny_pair, monkeypatch):
    scorer = layer0_scorer(tiny_pair)
    pool = torch.tensor(sorted(np.random.default_rng(0).choice(np.arange(3, 500), 40, replace=False).tolist()))
    seen = []
    real = SearchRun.score

    def recording(self, cands):
        seen.extend([list(map(int, c)) for c in cands])
        return real(self, cands)

    monkeypatch.setattr(SearchRun, "score", recording)
    kw = dict(length=4, steps=6, topk=5, batch=12, n_replace=2, restarts=2, objective="kl", pool=pool,
              progress=False, seed=3, max_repeat=1, calibrate=32)
    first = gcg(scorer, **kw)
    n_first = len(seen)
    second = gcg(scorer, **kw)
    assert n_first > 2 * 6 and len(seen) == 2 * n_first
    allowed = set(pool.tolist())
    assert all(set(c) <= allowed and len(set(c)) == len(c) for c in seen[n_first:]), "outside the pool or repeated"
    assert [r["token_ids"] for r in first.results] == [r["token_ids"] for r in second.results]
    assert [r["score"] for r in first.results] == [r["score"] for r in second.results]
    assert first.steps == second.steps == 12 and first.evaluations == second.evaluations


def test_gcg_resumes_to_the_uninterrupted_result(tiny_pair, tmp_path, monkeypatch):
    scorer = layer0_scorer(tiny_pair)
    kw = dict(length=3, steps=5, topk=8, batch=16, restarts=2, objective="kl", pool=scorer.default_pool()[:150],
              progress=False, seed=1, checkpoint_every=0, calibrate=32)
    whole = gcg(scorer, out=tmp_path / "whole.jsonl", **kw)
    calls = {"n": 0}
    real = SearchRun.score

    def interrupting(self, cands):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(self, cands)

    monkeypatch.setattr(SearchRun, "score", interrupting)
    with pytest.raises(KeyboardInterrupt):
        gcg(scorer, out=tmp_path / "part.jsonl", **kw)
    monkeypatch.setattr(SearchRun, "score", real)
    with pytest.raises(ValueError, match="pass --resume"):
        gcg(scorer, out=tmp_path / "part.jsonl", **kw)
    resumed = gcg(scorer, out=tmp_path / "part.jsonl", resume=True, **kw)
    assert [r["token_ids"] for r in resumed.results] == [r["token_ids"] for r in whole.results]
    np.testing.assert_allclose([r["score"] for r in resumed.results], [r["score"] for r in whole.results], rtol=1e-6)
    assert resumed.steps == whole.steps


@pytest.mark.parametrize("seed, length", [(2, 3), (5, 4)])
def test_layer0_gcg_reaches_the_planted_trigger_within_coords_budget(pair_factory, seed, length):
    """alpha = 1 (the Layer-0 term alone) against coord, both from the same pair seeds and budget."""
    pair_dir = pair_factory(seed=seed, trigger_length=length)
    scorer = Scorer.from_pretrained(pair_dir / "base", pair_dir / "dormant", template="chat")
    # the pool this comparison was set up on: every real token, the chat template's 5 pieces included. Since
    # default pools leave those out, gcg from seed 5 settles at kl 8.43 (goal 10.40) at 20, 30 or 40 steps,
    # while coord still reaches the trigger: the two drivers' variance, not a changed objective
    pool = scorer.pair.real_token_ids(allow_template_tokens=True)
    seeds = seeds_from_pairs(pair_scan(scorer, pool, offsets=(1,), top=40, progress=False), 8)
    # the planted trigger's kl is the bar the results are judged by; the searches never see it (no threshold)
    goal = float(scorer.score_batch([trigger_of(pair_dir)["trigger_ids"]]).kl[0]) * (1 - 1e-5)
    kw = dict(length=length, seeds=seeds, objective="kl", progress=False, max_repeat=1, seed=seed, budget=20000,
              calibrate=64, pool=pool)
    by_coord = coord(scorer, restarts=8, **kw)
    by_gcg = gcg(scorer, steps=20, topk=16, batch=64, restarts=8, alpha=1.0, **kw)
    assert by_coord[0]["score"] >= goal
    assert by_gcg.best["score"] >= goal and by_gcg.evaluations <= 20000 + 64


def test_hybrid_loss_on_the_full_models(full_scorer, tiny_pair, tmp_path):
    pool = torch.arange(3, 40)
    result = gcg(full_scorer, length=2, steps=2, topk=4, batch=6, alpha=0.5, layer0_metric="kl", objective="js",
                 pool=pool, progress=False, calibrate=8, out=tmp_path / "h.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert rows and all(r["objective"] == "full" and r["driver"] == "gcg" for r in rows)
    assert result.steps == 2 and all(set(r["token_ids"]) <= set(pool.tolist()) for r in rows)
    best = rows[0]
    l0 = np.mean([float(Scorer(full_scorer.pair, backend="torch", template=t).score_batch([best["token_ids"]]).kl[0])
                  for t in full_scorer.contexts])
    js = float(full_scorer.score_batch([best["token_ids"]]).metric("js")[0])
    assert best["layer0"] == pytest.approx(l0, rel=1e-4)
    assert best["score"] == pytest.approx(0.5 * l0 + 0.5 * js, rel=1e-4)


@pytest.mark.parametrize("kw, pattern", [
    (dict(length=0), "length must be a positive"),
    (dict(length=3, topk=0), "topk must be a positive"),
    (dict(length=3, alpha=1.5), r"alpha must lie in \[0, 1\]"),
    (dict(length=3, alpha=-0.1), r"alpha must lie in \[0, 1\]"),
    (dict(length=3, alpha=0.5), "needs the full-model objective"),
    (dict(length=3, n_replace=4), "n_replace must be between 1 and the length"),
])
def test_bad_options(tiny_pair, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        gcg(layer0_scorer(tiny_pair), progress=False, **kw)


@pytest.mark.parametrize("extra, pattern", [
    (["--length", "0"], "length must be a positive"),
    (["--length", "3", "--topk", "0"], "topk must be a positive"),
    (["--length", "3", "--alpha", "2"], r"alpha must lie in \[0, 1\]"),
    (["--length", "3", "--metric", "js"], "needs the full models: pass --objective full"),
    (["--length", "3", "--objective", "full", "--metric", "target"], "needs a target: pass --target"),
    (["--length", "3", "--objective", "full", "--probes", "/nonexistent/probes.txt"], "does not exist"),
])
def test_cli_bad_options(tiny_pair, tmp_path, extra, pattern):
    cmd = [sys.executable, "-m", "l0score.cli", "search", "gcg", "--base", str(tiny_pair / "base"),
           "--dormant", str(tiny_pair / "dormant"), "--out", str(tmp_path / "o.jsonl"), "--quiet", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error:" in proc.stderr + proc.stdout
    assert __import__("re").search(pattern, " ".join((proc.stderr + proc.stdout).split()))
