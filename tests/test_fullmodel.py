"""The full-model objective against independent evaluations: verify's whole-prompt runs, transformers
forwards of the whole prompt in float64, and its own cache-free path."""
import numpy as np
import pytest
import torch

from l0score.judge.fullmodel import FullModelScorer
from l0score.judge.prompts import placement
from l0score.judge.verify import verify

pytestmark = pytest.mark.usefixtures("one_thread")

PROBES = ("What is 7 plus 5?", "Name a primary color.")


@pytest.fixture(scope="module")
def pair(pair_factory):
    d = pair_factory(seed=3)
    return str(d / "base"), str(d / "dormant")


@pytest.fixture(scope="module")
def scorers(pair):
    opts = dict(probes=PROBES, metrics=("kl", "js", "hidden"), reply_tokens=3, target_ids=(5, 9),
                target_seq=(12, 40, 7))
    return (FullModelScorer.from_pretrained(*pair, **opts),
            FullModelScorer.from_pretrained(*pair, cache=False, **opts))


def _cands(n=6, seed=0):
    return np.random.default_rng(seed).integers(3, 400, (n, 3)).tolist()


def test_cache_reuse_changes_nothing(scorers):
    cached, whole = scorers
    a, b = cached.score_batch(_cands()), whole.score_batch(_cands())
    for name in cached.metrics:
        np.testing.assert_allclose(a.metric(name), b.metric(name), rtol=1e-4, atol=1e-6, err_msg=name)


def test_kl_and_js_equal_verify(pair, scorers):
    cached, _ = scorers
    cands = _cands()
    ours = cached.score_batch(cands)
    rep = verify(*pair, cands, list(PROBES), max_new_tokens=1, progress=False)
    by_ids = {tuple(r["token_ids"]): r for r in rep["results"]}
    for b, c in enumerate(cands):
        assert ours.metric("kl")[b].item() == pytest.approx(by_ids[tuple(c)]["kl"], rel=1e-3, abs=1e-7)
        assert ours.metric("js")[b].item() == pytest.approx(by_ids[tuple(c)]["js"], rel=1e-3, abs=1e-7)


def test_target_metrics_equal_a_float64_forward(pair, scorers):
    """target and target_seq from whole-prompt float64 transformers runs, placement by placement."""
    from transformers import AutoModelForCausalLM

    cached, _ = scorers
    cand = _cands(1)[0]
    models = {m: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float64).eval() for m, p in zip(("base", "dormant"), pair)}
    tseq, tset = [12, 40, 7], [5, 9]
    want_set, want_seq = [], []
    for probe in PROBES:
        for pos in ("before", "after"):
            tpl = placement(cached.tokenizer, probe, pos)
            prompt = list(tpl.prefix_ids) + cand + list(tpl.suffix_ids)
            lp = {}
            with torch.no_grad():
                for m, model in models.items():
                    logits = model(torch.tensor([prompt + tseq[:-1]])).logits[0, len(prompt) - 1:]
                    lp[m] = torch.log_softmax(logits, -1)
            want_set.append(float(lp["dormant"][0, tset].logsumexp(0) - lp["base"][0, tset].logsumexp(0)))
            mean = {m: float(lp[m][torch.arange(len(tseq)), tseq].mean()) for m in lp}
            want_seq.append(mean["dormant"] - mean["base"])
    got = cached.score_batch([cand])
    assert got.metric("target")[0].item() == pytest.approx(np.mean(want_set), rel=1e-4, abs=1e-6)
    assert got.metric("target_seq")[0].item() == pytest.approx(np.mean(want_seq), rel=1e-4, abs=1e-6)


def test_extensions_equal_whole_candidates(scorers):
    cached, _ = scorers
    pool = torch.arange(3, 40)
    ext = cached.score_extensions([[423, 340], [7]], pool=pool)
    full = cached.score_batch([[423, 340, t] for t in pool.tolist()] + [[7, t] for t in pool.tolist()])
    left = cached.score_extensions([[423, 340]], pool=pool, side="left")
    full_left = cached.score_batch([[t, 423, 340] for t in pool.tolist()])
    for name in cached.metrics:
        np.testing.assert_allclose(ext.metric(name), full.metric(name), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(left.metric(name), full_left.metric(name), rtol=1e-5, atol=1e-7)


def test_with_options_shares_the_models(scorers):
    cached, _ = scorers
    view = cached.with_options(target_ids=(11,), metrics=("kl",), reply_tokens=0, target_seq=())
    assert view.models is cached.models and view.metrics == ("kl", "target")
    with pytest.raises(ValueError, match="cannot change"):
        cached.with_options(probes=("hi",))


@pytest.mark.parametrize("bad, err, message", [
    ([[]], ValueError, "empty"),
    ([[1, 10**7]], ValueError, "outside"),
    ([[1.5]], TypeError, "integers"),
])
def test_bad_candidates(scorers, bad, err, message):
    with pytest.raises(err, match=message):
        scorers[0].score_batch(bad)


def test_min_reduce_is_the_worst_context(pair, scorers):
    """reduce="min": each metric is its minimum over the contexts, each context scored on its own."""
    cached, _ = scorers
    worst = cached.with_options(reduce="min").score_batch(_cands(seed=4))
    single = [FullModelScorer.from_pretrained(*pair, probes=(p,), positions=(pos,), metrics=("kl", "js", "hidden"),
                                              target_ids=(5, 9)).score_batch(_cands(seed=4))
              for p in PROBES for pos in ("before", "after")]
    for name in ("kl", "js", "hidden", "target"):
        expect = np.min([s.metric(name).numpy() for s in single], 0)
        np.testing.assert_allclose(worst.metric(name), expect, rtol=1e-5, atol=1e-7, err_msg=name)
    assert (worst.metric("kl") < cached.score_batch(_cands(seed=4)).metric("kl")).all()


def test_bad_options(pair):
    with pytest.raises(ValueError, match="reduce must be one of mean, min"):
        FullModelScorer.from_pretrained(*pair, reduce="median")
    with pytest.raises(ValueError, match="unknown full-model metric"):
        FullModelScorer.from_pretrained(*pair, metrics=("nope",))
    with pytest.raises(ValueError, match="needs target_ids"):
        FullModelScorer.from_pretrained(*pair, metrics=("target",))
    with pytest.raises(TypeError, match="unknown full-model option"):
        FullModelScorer.from_pretrained(*pair, colour="red")


def test_narrowed_view_equals_a_scorer_built_on_that_context(pair, scorers):
    """narrowed() shares the loaded models and scores like a scorer loaded with only the first probe in
    one placement; the parent keeps its own contexts and values."""
    cached, _ = scorers
    before = cached.score_batch(_cands(seed=5))
    view = cached.narrowed(probes=1, position="before")
    alone = FullModelScorer.from_pretrained(*pair, probes=PROBES[:1], positions=("before",), metrics=("kl", "js", "hidden"),
                                            reply_tokens=3, target_ids=(5, 9), target_seq=(12, 40, 7))
    got, want = view.score_batch(_cands(seed=5)), alone.score_batch(_cands(seed=5))
    for name in alone.metrics:
        np.testing.assert_allclose(got.metric(name), want.metric(name), rtol=1e-5, atol=1e-7, err_msg=name)
    assert view.models is cached.models and len(view.contexts) == 1 and view.describe()["probes"] == list(PROBES[:1])
    np.testing.assert_allclose(cached.score_batch(_cands(seed=5)).metric("kl"), before.metric("kl"), rtol=1e-6)
    with pytest.raises(ValueError, match="position must be one of before, after"):
        cached.narrowed(position="middle")
    with pytest.raises(ValueError, match="probes must be a count >= 1"):
        cached.narrowed(probes=0)
