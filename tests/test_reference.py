"""The torch reference (Scorer backend="torch") against transformers' own Qwen2 Layer-0 modules."""
import zlib

import numpy as np
import pytest
import torch

from l0score import Scorer
from l0score.core.model_pair import ModelPair
from conftest import FOUNDATION_CONFIGS as CONFIGS, kind_template
from oracle import oracle_scores

OPTIONS = [
    dict(region="candidate", baseline="none", heads=None, offsets=(0, 1, 2, 7)),
    dict(region="all", baseline="bias", heads="subset", offsets=(1, 3, 500)),
    dict(region="candidate", baseline="bias", heads="subset", offsets=()),
]


def _candidates(pair, rng):
    lengths = [1, 3, 17, 64] if pair.config.head_dim <= 32 else [1, 5, 64]
    return [rng.integers(0, pair.config.vocab_rows, n).tolist() for n in lengths]


def assert_matches(scores, cands, tpl, pair_dir, opts, heads):
    rtol = 1e-4
    for b, cand in enumerate(cands):
        want = oracle_scores(pair_dir / "base", pair_dir / "dormant", tpl.prefix_ids, cand, tpl.suffix_ids,
                             heads=heads, region=opts["region"], baseline=opts["baseline"], offsets=opts["offsets"])
        scale = max(want["max_abs"], 1e-3)
        np.testing.assert_allclose(scores.max_abs[b].item(), want["max_abs"], rtol=rtol, atol=rtol * scale)
        np.testing.assert_allclose(scores.head_max[b].numpy(), want["head_max"], rtol=rtol, atol=rtol * scale)
        np.testing.assert_allclose(scores.band[b].numpy(), want["band"], rtol=rtol, atol=rtol * scale)
        # A float32 row KL (sum of p * (log p - log q)) carries ~1e-7 absolute rounding; near-zero
        # head KLs (a 1-token raw candidate has one or two rows) are compared against that floor.
        kl_atol = max(rtol * want["kl"], 1e-6)
        np.testing.assert_allclose(scores.kl[b].item(), want["kl"], rtol=rtol, atol=kl_atol)
        np.testing.assert_allclose(scores.head_kl[b].numpy(), want["head_kl"], rtol=rtol, atol=kl_atol)
        assert tuple(scores.argmax[b].tolist()) == want["argmax"], (b, cand)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("template", ["raw", "chat", "explicit"])
def test_reference_matches_transformers(pair_factory, name, template):
    pair_dir = pair_factory(**CONFIGS[name])
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    tpl = kind_template(template, pair)
    rng = np.random.default_rng(zlib.crc32(f"{name}/{template}".encode()))
    cands = _candidates(pair, rng)
    for opts in OPTIONS:
        heads = None if opts["heads"] is None else list(range(0, pair.config.num_heads, 2))
        scorer = Scorer(pair, backend="torch", template=tpl, region=opts["region"], baseline=opts["baseline"],
                        heads=heads, offsets=opts["offsets"])
        scores = scorer.score_batch(cands)
        assert scores.head_max.shape == (len(cands), len(scorer.heads))
        assert_matches(scores, cands, tpl, pair_dir, opts, heads)


@pytest.mark.parametrize("name", ["gqa7-d32-1e6-fp32", "gqa2-d16-1e6-bf16"])
def test_table_path_equals_direct_path(pair_factory, name):
    pair_dir = pair_factory(**CONFIGS[name])
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    rng = np.random.default_rng(1)
    cands = [rng.integers(0, pair.config.vocab_rows, n).tolist() for n in (2, 9, 4)]
    kw = dict(backend="torch", template="chat", region="all", baseline="bias", offsets=(1, 2))
    table = Scorer(pair, table=True, **kw).score_batch(cands)
    direct = Scorer(pair, table=False, **kw).score_batch(cands)
    for field in ("max_abs", "head_max", "kl", "head_kl", "band"):
        torch.testing.assert_close(getattr(table, field), getattr(direct, field), rtol=1e-5, atol=1e-6)
    assert torch.equal(table.argmax, direct.argmax)


def test_array_inputs_equal_lists(tiny_pair):
    scorer = Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", backend="torch", template="chat")
    cands = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    padded = np.zeros((3, 4), dtype=np.int32)
    for b, c in enumerate(cands):
        padded[b, : len(c)] = c
    lengths = [4, 2, 3]
    a = scorer.score_batch(cands)
    for tokens in (padded, torch.from_numpy(padded).long()):
        b = scorer.score_batch(tokens, lengths=lengths)
        torch.testing.assert_close(a.max_abs, b.max_abs)
        torch.testing.assert_close(a.kl, b.kl)
    rec = a.to_records()
    assert len(rec) == 3 and set(rec[0]) >= {"max_abs", "kl", "argmax", "head_max", "head_kl", "band"}


def test_planted_trigger_stands_out(tiny_pair):
    from conftest import trigger_of

    trig = trigger_of(tiny_pair)["trigger_ids"]
    scorer = Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", backend="torch", template="chat")
    pair = scorer.pair
    rng = np.random.default_rng(0)
    pool = [i for i in range(pair.n_tokens) if i not in pair.special_ids]
    randoms = rng.choice(pool, size=(500, len(trig))).tolist()
    s = scorer.score_batch([trig, trig[::-1]] + randoms)
    assert s.kl[0] > s.kl[2:].max() and s.max_abs[0] > s.max_abs[2:].max()
    assert s.kl[1] < s.kl[0] / 2


def test_difference_from_a_bf16_transformers_run_is_bounded(pair_factory):
    """The engine computes in fp32 from stored bf16 values; a bf16 model rounds every step. The README
    documents the difference measured here (bound: 5% relative on max_abs and kl)."""
    pair_dir = pair_factory(dtype="bfloat16")
    scorer = Scorer.from_pretrained(pair_dir / "base", pair_dir / "dormant", backend="torch", template="chat")
    rng = np.random.default_rng(0)
    cands = [rng.integers(0, scorer.pair.n_tokens, 8).tolist() for _ in range(12)]
    scores = scorer.score_batch(cands)
    tpl = scorer.template
    for b, cand in enumerate(cands):
        want = oracle_scores(pair_dir / "base", pair_dir / "dormant", tpl.prefix_ids, cand, tpl.suffix_ids,
                             dtype=torch.bfloat16)
        assert scores.max_abs[b].item() == pytest.approx(want["max_abs"], rel=5e-2)
        assert scores.kl[b].item() == pytest.approx(want["kl"], rel=5e-2)
