"""Layer-0 search at scale (issue 16) and diverse results (issue 15.2), on tiny planted pairs whose
trigger.json is the ground truth (never handed to the code under test)."""
import json

import pytest
import torch

from conftest import trigger_of
from l0score import Scorer
from l0score.analysis.weight_diff import analyze, read_analysis
from l0score.search import beam, pairs
from l0score.search.clusters import cluster_ids
from l0score.search.layer0_stage import Layer0Options, layer0_stage
from l0score.search.pair_cache import cached_pair_scan

CASES = [(1, 2), (2, 3), (3, 4), (4, 5)]  # (pair seed, trigger length): 1-4 planted heads


@pytest.fixture(scope="module")
def analysed(pair_factory, tmp_path_factory):
    def get(seed, length):
        d = pair_factory(seed=seed, trigger_length=length)
        out = d / "analysis-l0"
        if not (out / "analysis.json").exists():
            analyze(d / "base", d / "dormant", out, plots=False, progress=False, layer0_only=True)
        return d, json.loads((out / "analysis.json").read_text())
    return get


def scorer_of(d, **kw):
    return Scorer.from_pretrained(d / "base", d / "dormant", template="chat", **kw)


@pytest.mark.parametrize("seed, length", CASES)
def test_seeds_in_both_roles(analysed, seed, length):
    d, a = analysed(seed, length)
    trig = trigger_of(d)
    assert set(trig["trigger_ids"]) <= set(a["seed_tokens"][: 4 * length])
    roles = dict(zip(a["seed_tokens"], a["seed_roles"]))
    assert roles[trig["trigger_ids"][0]] == "key"  # the first token only ever acts as a key
    # the changed queries of each planted head point at that pair's key token (blocks kq<h>)
    per_block = a["layer0"]["per_block_tokens"]
    for p in trig["pairs"]:
        assert per_block[f"kq{p['head']}"][0]["id"] == p["key_token"]
    assert read_analysis(d / "analysis-l0")["seed_roles"] == a["seed_roles"]


def test_left_extensions_equal_score_batch(tiny_pair):
    scorer = scorer_of(tiny_pair, offsets=(1, 2))
    fragments, pool = [[5, 6], [7], [8, 9, 10]], list(range(3, 90, 4))
    left = scorer.score_extensions(fragments, pool, side="left")
    full = scorer.score_batch([[t] + f for f in fragments for t in pool])
    for field in ("max_abs", "head_max", "kl", "head_kl", "band"):
        torch.testing.assert_close(getattr(left, field), getattr(full, field), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="side"):
        scorer.score_extensions(fragments, pool, side="up")


def test_with_heads_scores_like_a_scorer_of_those_heads(tiny_pair):
    scorer = scorer_of(tiny_pair, baseline="bias", offsets=(1,))
    view = scorer.with_heads([3, 1])
    fresh = scorer_of(tiny_pair, baseline="bias", offsets=(1,), heads=[1, 3])
    cands = [[5, 6, 7], [40, 41, 42, 43]]
    a, b = view.score_batch(cands), fresh.score_batch(cands)
    assert view.heads == (1, 3)
    for field in ("head_max", "kl", "band"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field))


@pytest.mark.parametrize("seed, length", [(3, 4), (4, 5)])
def test_beam_grows_a_middle_seed_into_the_whole_trigger(analysed, seed, length):
    d, _ = analysed(seed, length)
    trig = trigger_of(d)["trigger_ids"]
    scorer = scorer_of(d)
    # one seed, found independently: the query token of the strongest pair-scan cell. It is never the
    # trigger's first token, so appending alone cannot reach the trigger from it.
    scan = pairs.pair_scan(scorer, scorer.default_pool(), offsets=(1,), top=8, progress=False)
    seed_token = scan["top"][0]["query_token"]
    res = beam(scorer, length=length, width=8, seeds=[[seed_token]], objective="head_max_sum", progress=False)
    assert res[0]["token_ids"] == trig


@pytest.mark.parametrize("seed, length", CASES)
def test_layer0_stage_puts_the_trigger_first(analysed, seed, length):
    d, a = analysed(seed, length)
    trig = trigger_of(d)["trigger_ids"]
    result = layer0_stage(scorer_of(d), a, Layer0Options(max_length=5))
    assert result.candidates[0]["token_ids"] == trig
    assert set(trig) <= set(result.pool[: 4 * length])
    assert set(result.focus_heads) >= {p["head"] for p in trigger_of(d)["pairs"]}
    assert set(result.seconds) == {"evidence", "beam", "minimize", "coord"}


def test_layer0_stage_bad_options(analysed):
    d, a = analysed(1, 2)
    with pytest.raises(ValueError, match="max_length"):
        layer0_stage(scorer_of(d), a, Layer0Options(max_length=0))
    with pytest.raises(TypeError, match="Layer0Options"):
        layer0_stage(scorer_of(d), a, {"max_length": 3})
    with pytest.raises(FileNotFoundError):
        layer0_stage(scorer_of(d), d / "no-such-dir")


def test_pair_scan_reused_from_disk(tiny_pair, monkeypatch, tmp_path):
    monkeypatch.setenv("L0SCORE_CACHE", str(tmp_path))
    scorer = scorer_of(tiny_pair)
    pool = scorer.default_pool()
    reference = pairs.pair_scan(scorer, pool, offsets=(1, 2), top=12, progress=False)
    focus = cached_pair_scan(scorer.with_heads([2]), pool, offsets=(1, 2), top=12, progress=False)
    assert focus["cached_heads"] == [] and list(focus["per_head"]) == [2]
    calls = []
    real = pairs.pair_scan
    monkeypatch.setattr("l0score.search.pair_cache.pair_scan",
                        lambda s, *a, **k: calls.append(s.heads) or real(s, *a, **k))
    every = cached_pair_scan(scorer, pool, offsets=(1, 2), top=12, progress=False)
    assert calls == [tuple(h for h in scorer.heads if h != 2)]  # only the heads not on disk
    again = cached_pair_scan(scorer, pool, offsets=(1, 2), top=8, progress=False)
    assert len(calls) == 1 and again["cached_heads"] == list(scorer.heads)
    key = lambda rows: [(r["query_token"], r["key_token"], r["offset"], r["head"]) for r in rows]
    assert key(every["top"]) == key(reference["top"])
    assert key(again["top"]) == key(reference["top"][:8])
    other = cached_pair_scan(scorer, pool, offsets=(1,), top=12, progress=False)  # other offsets: rescanned
    assert other["cached_heads"] == [] and len(calls) == 2


def test_cli_pairs_heads_from_and_beam_flow(analysed, tmp_path, monkeypatch):
    from l0score.cli import main

    monkeypatch.setenv("L0SCORE_CACHE", str(tmp_path / "cache"))
    d, a = analysed(2, 3)
    an = str(d / "analysis-l0" / "analysis.json")
    pair = ["--base", str(d / "base"), "--dormant", str(d / "dormant")]
    out = tmp_path / "pairs.jsonl"
    main(["search", "pairs", *pair, "--heads-from", an, "--offsets", "1", "--out", str(out), "--quiet"])
    heads = {json.loads(line)["head"] for line in out.read_text().splitlines()}
    assert heads == set(a["focus_heads"])
    res = tmp_path / "beam.jsonl"
    main(["search", "beam", *pair, "--heads-from", an, "--seeds-from", an, "--length", "3", "--metric",
          "head_max_sum", "--width", "8", "--out", str(res), "--quiet"])
    rows = [json.loads(line) for line in res.read_text().splitlines()]
    assert rows[0]["token_ids"] == trigger_of(d)["trigger_ids"]
    assert all("cluster" in r for r in rows) and all(max(r["token_ids"].count(t) for t in r["token_ids"]) == 1
                                                      for r in rows)  # default --max-repeat 1
    assert main(["search", "beam", *pair, "--heads-from", an, "--heads", "1", "--length", "2", "--out",
                 str(tmp_path / "x.jsonl"), "--quiet"]) == 2


def test_cluster_rule():
    seqs = [[1, 2, 3], [3, 2, 1], [1, 2, 9], [4, 5, 6], [1, 5, 9], [4, 5, 7, 8]]
    assert cluster_ids(seqs) == [0, 0, 0, 1, 2, 3]


def test_search_results_carry_clusters_representatives_first(analysed):
    d, _ = analysed(2, 3)
    res = beam(scorer_of(d), length=3, width=8, seeds=[[t] for t in range(3, 40)], objective="kl", progress=False,
               keep=40)
    reps = [r for r in res if r["representative"]]
    assert res[: len(reps)] == reps  # the first rows are different hypotheses
    assert [r["cluster"] for r in reps] == list(range(len(reps)))
    assert all(a["score"] >= b["score"] for a, b in zip(reps, reps[1:]))
