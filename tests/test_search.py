"""Search drivers on planted pairs: exact pair scan vs brute force, incremental extensions vs
score_batch, trigger recovery, checkpoint/resume, and clear errors for bad options."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import trigger_of
from l0score import Scorer
from l0score.search import beam, build_pool, coord, mcts, minimize, pair_scan, seeds_from_pairs
from l0score.search.run import SearchRun


def make_scorer(pair_dir, template="chat", **kw):
    return Scorer.from_pretrained(pair_dir / "base", pair_dir / "dormant", template=template, **kw)


def test_pair_scan_equals_brute_force(tiny_pair):
    scorer = make_scorer(tiny_pair, template="raw", backend="torch")
    trig = trigger_of(tiny_pair)["trigger_ids"]
    pool = torch.tensor(sorted(set(range(3, 40)) | set(trig)))
    scan = pair_scan(scorer, pool, offsets=(1, 2), top=15, progress=False, block=16)
    brute = []
    for r in (1, 2):
        for h in scorer.heads:
            per_head = Scorer(scorer.pair, backend="torch", template="raw", heads=[h], offsets=(r,))
            seqs = [[b] + [pool[0].item()] * (r - 1) + [a] for a in pool.tolist() for b in pool.tolist()]
            band = per_head.score_batch(seqs).band[:, 0]
            brute += [(float(v), seq[-1], seq[0], r, h) for v, seq in zip(band.tolist(), seqs)]
    brute.sort(key=lambda x: -x[0])
    got = [(row["abs"], row["query_token"], row["key_token"], row["offset"], row["head"]) for row in scan["top"]]
    np.testing.assert_allclose([g[0] for g in got], [b[0] for b in brute[:15]], rtol=1e-5)
    assert {g[1:] for g in got[:5]} == {b[1:] for b in brute[:5]}
    for h, rows in scan["per_head"].items():
        best_h = max(b[0] for b in brute if b[4] == h)
        assert rows[0]["abs"] == pytest.approx(best_h, rel=1e-5)
    planted = {(p["query_token"], p["key_token"]) for p in trigger_of(tiny_pair)["pairs"]}
    assert planted <= {(row["query_token"], row["key_token"]) for row in scan["top"]}


@pytest.mark.parametrize("region, baseline", [("candidate", "none"), ("all", "bias")])
def test_extensions_equal_score_batch(tiny_pair, region, baseline):
    scorer = make_scorer(tiny_pair, region=region, baseline=baseline, offsets=(0, 1, 2), backend="torch")
    prefixes = [[5, 6], [], [7, 8, 9, 10]]
    pool = list(range(3, 60, 5))
    ext = scorer.score_extensions(prefixes, pool)
    full = scorer.score_batch([p + [t] for p in prefixes for t in pool])
    for field in ("max_abs", "head_max", "kl", "head_kl", "band"):
        torch.testing.assert_close(getattr(ext, field), getattr(full, field), rtol=1e-5, atol=1e-6)
    assert torch.equal(ext.argmax, full.argmax)


# "Recovered" checks the planted structure, not only equality: the search finds a sequence scoring at
# least the trigger's own score, holding the strongest planted (key, query) pair adjacent, and (on kl
# in the chat template) the trigger itself among the top 5 — KL is not additive over pairs, so a
# near-miss that swaps the last token can edge above the trigger. In a raw context a row has few
# keys and KL saturates, so there the search runs on max_abs, where every sequence holding the
# strongest planted pair ties with the trigger.
CASES = [(1, 2, "chat", "kl"), (2, 3, "raw", "max_abs"), (3, 5, "chat", "kl")]


@pytest.mark.parametrize("seed, length, template, metric", CASES)
@pytest.mark.parametrize("driver", ["beam", "coord", "mcts"])
def test_driver_recovers_planted_trigger(pair_factory, driver, seed, length, template, metric):
    pair_dir = pair_factory(seed=seed, trigger_length=length)
    trig = trigger_of(pair_dir)["trigger_ids"]
    scorer = make_scorer(pair_dir, template=template)
    pool = scorer.default_pool()
    seeds = seeds_from_pairs(pair_scan(scorer, pool, offsets=(1,), top=40, progress=False), 8)
    kw = dict(length=length, seeds=seeds, objective=metric, progress=False, max_repeat=1, seed=seed)
    if driver == "beam":
        results = beam(scorer, width=8, **kw)
    elif driver == "coord":
        results = coord(scorer, restarts=4, **kw)
    else:
        results = mcts(scorer, budget=6 * len(pool), **kw)
    best = results[0]
    trig_score = float(scorer.score_batch([trig]).metric(metric)[0])
    assert best["score"] >= trig_score * (1 - 1e-5)
    if metric == "kl":
        assert trig in [r["token_ids"] for r in results[:5]], (driver, results[:5], trig)
        assert best["score"] <= trig_score * 1.1
    else:
        assert best["score"] == pytest.approx(trig_score, rel=1e-5)
    strongest = max(trigger_of(pair_dir)["pairs"], key=lambda p: p["delta_logit"])
    pos = {t: i for i, t in enumerate(best["token_ids"])}
    assert pos[strongest["query_token"]] - pos[strongest["key_token"]] == 1
    assert best["z"] > 10 and best["driver"] == driver
    assert set(best) >= {"token_ids", "text", "score", "max_abs", "kl", "band", "z", "driver", "step"}


def test_repeats_score_like_the_trigger_and_minimize_shows_why(pair_factory):
    """Without a repeat cap, sequences repeating a planted token can match the trigger's score:
    minimisation exposes the planted (key, query) pair that carries it."""
    pair_dir = pair_factory(seed=3, trigger_length=4)
    truth = trigger_of(pair_dir)
    scorer = make_scorer(pair_dir)
    seeds = seeds_from_pairs(pair_scan(scorer, scorer.default_pool(), offsets=(1,), top=40, progress=False), 8)
    results = beam(scorer, length=4, width=8, seeds=seeds, objective="max_abs", progress=False, max_repeat=2)
    trig_score = float(scorer.score_batch([truth["trigger_ids"]]).max_abs[0])
    assert results[0]["score"] >= trig_score * 0.999
    small = minimize(scorer, results[0]["token_ids"], "max_abs", keep=0.99)
    planted = {(p["key_token"], p["query_token"]) for p in truth["pairs"]}
    ids = small["token_ids"]
    assert any((ids[i], ids[j]) in planted for i in range(len(ids)) for j in range(i + 1, len(ids)))
    assert len(ids) <= 3


@pytest.mark.parametrize("driver", ["beam", "coord", "mcts"])
def test_interrupted_run_resumes_to_the_same_results(tiny_pair, tmp_path, monkeypatch, driver):
    scorer = make_scorer(tiny_pair)
    pool = scorer.default_pool()[:120]
    fn = {"beam": beam, "coord": coord, "mcts": mcts}[driver]
    kw = dict(length=4, objective="kl", progress=False, pool=pool, seeds=[[5, 6], [7, 8]], budget=3000,
              checkpoint_every=0, seed=4)
    stop_at = {"beam": 2, "coord": 6, "mcts": 6}[driver]
    extra = {"beam": dict(width=6), "coord": dict(restarts=3), "mcts": dict(batch=4)}[driver]
    whole = fn(scorer, out=tmp_path / "whole.jsonl", **kw, **extra)

    calls = {"n": 0}
    real_score, real_ext = SearchRun.score, SearchRun.score_extensions

    def interrupting(real):
        def wrapped(self, *a, **k):
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise KeyboardInterrupt
            return real(self, *a, **k)
        return wrapped

    monkeypatch.setattr(SearchRun, "score", interrupting(real_score))
    monkeypatch.setattr(SearchRun, "score_extensions", interrupting(real_ext))
    out = tmp_path / "part.jsonl"
    with pytest.raises(KeyboardInterrupt):
        fn(scorer, out=out, **kw, **extra)
    assert (tmp_path / "part.jsonl.ckpt.json").exists()
    with pytest.raises(ValueError, match="pass --resume"):
        fn(scorer, out=out, **kw, **extra)
    monkeypatch.setattr(SearchRun, "score", real_score)
    monkeypatch.setattr(SearchRun, "score_extensions", real_ext)
    resumed = fn(scorer, out=out, resume=True, **kw, **extra)
    assert [r["token_ids"] for r in resumed] == [r["token_ids"] for r in whole]
    np.testing.assert_allclose([r["score"] for r in resumed], [r["score"] for r in whole], rtol=1e-6)
    with pytest.raises(ValueError, match="different options"):
        fn(scorer, out=out, resume=True, **{**kw, "seed": 5}, **extra)


def test_cli_killed_and_resumed(tiny_pair, tmp_path):
    """A real process killed mid-run keeps its results and resumes to the uninterrupted outcome."""
    def cmd(out, *extra):
        return [sys.executable, "-m", "l0score.cli", "search", "coord", "--base", str(tiny_pair / "base"),
                "--dormant", str(tiny_pair / "dormant"), "--length", "3", "--restarts", "6", "--seeds", "none",
                "--budget", "20000", "--checkpoint-every", "0", "--out", str(out), "--quiet", *extra]

    env = {**os.environ, "L0SCORE_CACHE": str(tmp_path / "cache")}
    subprocess.run(cmd(tmp_path / "whole.jsonl"), check=True, env=env, capture_output=True)
    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed.jsonl.ckpt.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and json.loads(ckpt.read_text() or "{}").get("used", 0) > 2000:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert ckpt.exists() and out.exists() and out.read_text().strip()
    subprocess.run(cmd(out, "--resume"), check=True, env=env, capture_output=True)
    read = lambda p: [json.loads(line)["token_ids"] for line in p.read_text().splitlines()]
    assert read(out) == read(tmp_path / "whole.jsonl")


def test_pool_filters(tiny_pair, tmp_path):
    scorer = make_scorer(tiny_pair, backend="torch")
    pair = scorer.pair
    full = build_pool(pair)
    assert not set(full.tolist()) & set(pair.special_ids) and full.max() < pair.n_tokens
    words = build_pool(pair, allow_regex=r"^ [a-z]+$")
    texts = pair.tokenizer.batch_decode([[i] for i in words.tolist()])
    assert len(words) > 10 and all(t.startswith(" ") and t[1:].isalpha() for t in texts)
    assert len(build_pool(pair, ascii_only=True, printable_only=True, no_whitespace_only=True)) < len(full)
    (tmp_path / "allow.txt").write_text("5\n6, 7\n")
    assert build_pool(pair, allow_list=tmp_path / "allow.txt").tolist() == [5, 6, 7]
    assert len(build_pool(pair, roundtrip=True)) <= len(full)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda s: beam(s, length=0, progress=False), ValueError, "length must be a positive"),
    (lambda s: coord(s, length=2, objective="loss", progress=False), ValueError, "unknown metric 'loss'"),
    (lambda s: beam(s, length=2, objective="band", progress=False), ValueError, "metric 'band' needs band offsets"),
    (lambda s: build_pool(s.pair, allow_regex="^zzzz$"), ValueError, "token pool is empty"),
    (lambda s: mcts(s, length=2, progress=False), ValueError, "needs a budget"),
    (lambda s: mcts(s, length=2, rollout="lucky", budget=10, progress=False), ValueError, "rollout must be one of"),
    (lambda s: mcts(s, length=2, budget=10, calibrate=0, progress=False), ValueError, "mcts needs calibrate > 0"),
    (lambda s: coord(s, length=2, objective="kl", budget=10, calibrate=-1, progress=False), ValueError, "calibrate must be a count"),
    (lambda s: pair_scan(s, s.default_pool(), offsets=(), progress=False), ValueError, "offsets must be in"),
    (lambda s: s.score_extensions([[1, 2]], pool=[]), ValueError, "pool must be a non-empty"),
    (lambda s: s.score_extensions([[1, -2]], pool=[3]), ValueError, "prefix 0: candidate 0, token 1: id -2"),
    (lambda s: s.score_extensions([[1]], pool=[3, 10**7]), ValueError, r"pool id 10000000 outside \[0, \d+\)"),
    (lambda s: s.score_extensions([[1]], pool=[3.0]), TypeError, "pool ids must be integers"),
])
def test_bad_options(tiny_pair, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(make_scorer(tiny_pair, backend="torch"))


def test_calibrate_zero_means_no_z(tiny_pair, tmp_path):
    """calibrate=0 skips the random-candidate calibration: results carry z None, the scores stay."""
    scorer = make_scorer(tiny_pair, backend="torch")
    rows = coord(scorer, length=2, objective="kl", restarts=1, budget=200, calibrate=0, progress=False, out=tmp_path / "c.jsonl")
    assert rows and all(r["z"] is None for r in rows) and all(np.isfinite(r["score"]) for r in rows)


def test_cli_bad_options(tiny_pair, tmp_path):
    from l0score.cli import main

    base = ["search", "beam", "--base", str(tiny_pair / "base"), "--dormant", str(tiny_pair / "dormant"),
            "--out", str(tmp_path / "o.jsonl"), "--quiet"]
    assert main(base + ["--length", "0"]) == 2
    assert main(base + ["--length", "2", "--metric", "loss"]) == 2
    assert main(base + ["--length", "2", "--allow-regex", "^zzzz$"]) == 2


def test_a_seeded_coord_start_takes_its_best_single_swap_first(pair_factory):
    """best_swap_first. Oracle: every single swap of the seed scored directly. The seeded start's first
    step is the best of them (recorded as step 1), wherever it is; the cyclic sweep alone would try
    the first place first. The planted pair's first token seeds it beside an unrelated token."""
    pair_dir = pair_factory(seed=1, trigger_length=2)
    trig = trigger_of(pair_dir)["trigger_ids"]
    scorer = make_scorer(pair_dir, template="chat")
    pool = scorer.default_pool()[:300].tolist()
    pool = sorted(set(pool) | set(trig))
    seed = [trig[0], next(t for t in pool if t not in trig)]
    swaps = [seed[:p] + [t] + seed[p + 1:] for p in range(2) for t in pool if t != seed[p]]
    values = scorer.score_batch(swaps).metric("max_abs")
    best = swaps[int(values.argmax())]
    rows = coord(scorer, length=2, restarts=1, max_sweeps=1, seeds=[seed], pool=torch.tensor(pool),
                 objective="max_abs", progress=False, keep=50, best_swap_first=True)
    assert any(r["token_ids"] == best and r["step"] == 1 for r in rows)
    assert rows[0]["score"] >= float(values.max()) * (1 - 1e-6)


class _Recording:
    """A scorer that remembers every candidate it was asked to score (delegates everything else)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score_batch(self, token_ids):
        self.seen += [tuple(int(t) for t in c) for c in token_ids]
        return self.inner.score_batch(token_ids)


def test_exhaustive_over_words_joins_distinct_words_in_shell_order(pair_factory):
    """With `words`, a candidate is `length` distinct words joined, in shell order over the words; a
    word that is the planted trigger is found at length 1 with the scorer's own score of its tokens."""
    from l0score.search.exhaustive import exhaustive, shell_order

    pair_dir = pair_factory(seed=1, trigger_length=2)
    trig = trigger_of(pair_dir)["trigger_ids"]
    scorer = make_scorer(pair_dir)
    others = [t for t in scorer.default_pool()[:12].tolist() if t not in trig]
    words = [others[0:2], others[2:4], trig, others[4:6]]
    kw = dict(objective="kl", progress=False, calibrate=0, keep=20, batch=5)
    rec = _Recording(scorer)
    exhaustive(rec, length=2, words=words, **kw)
    assert rec.seen == [tuple(words[i] + words[j]) for i, j in shell_order(len(words), 2)]
    best = exhaustive(scorer, length=1, words=words, **kw)
    assert best[0]["token_ids"] == trig
    assert best[0]["score"] == pytest.approx(float(scorer.score_batch([trig]).metric("kl")[0]), rel=1e-6)
    with pytest.raises(ValueError, match="needs at least 5 distinct words"):
        exhaustive(scorer, length=5, words=words, **kw)
    with pytest.raises(ValueError, match="words must be distinct"):
        exhaustive(scorer, length=1, words=[trig, list(trig)], **kw)


def test_screened_exhaustive_judges_each_batchs_best_by_the_screen(pair_factory, tmp_path):
    """With a screen, the scorer sees exactly each batch's best `screen_keep` by the screen's objective
    (recomputed here over every candidate, in shell order); the best overall is kept whatever the
    screen drops when the screen is the scorer itself; screen_keep >= batch changes nothing."""
    from l0score.search.exhaustive import exhaustive, shell_order

    pair_dir = pair_factory(seed=1, trigger_length=2)
    trig = trigger_of(pair_dir)["trigger_ids"]
    scorer, screen = make_scorer(pair_dir), make_scorer(pair_dir, template="raw")
    pool = scorer.default_pool()[:30].tolist()
    pool = pool[:28] + [t for t in trig if t not in pool[:28]] + pool[28:]
    kw = dict(length=2, pool=pool, objective="kl", progress=False, calibrate=0, keep=20, batch=100)
    plain = exhaustive(scorer, **kw)
    rec = _Recording(scorer)
    exhaustive(rec, screen=screen, screen_keep=5, **kw)
    cands = [[pool[i] for i in idx] for idx in shell_order(len(pool), 2)]
    raw = screen.score_batch(cands).metric("kl")
    want = [tuple(cands[s + i]) for s in range(0, len(cands), 100)
            for i in sorted(raw[s:s + 100].topk(min(5, len(cands) - s)).indices.tolist())]
    assert rec.seen == want
    self_screened = exhaustive(scorer, screen=scorer, screen_keep=3, **kw)
    assert self_screened[0]["token_ids"] == plain[0]["token_ids"] == trig
    wide = exhaustive(scorer, screen=screen, screen_keep=100, **kw)
    assert [r["token_ids"] for r in wide] == [r["token_ids"] for r in plain]
    with pytest.raises(ValueError, match="screen_keep must be a count >= 1"):
        exhaustive(scorer, screen=screen, screen_keep=0, **kw)


def test_exhaustive_ends_on_a_standout_its_confirm_accepts(pair_factory, tmp_path):
    """A standout ends the run after the batch where a candidate stood out and was confirmed: the scorer
    saw shell order up to that batch and nothing after, the first candidate to stand out is the planted
    trigger (handed to neither the run nor its confirm), and a resumed run scores nothing more. Rejected
    standouts change nothing but cost a confirm each, at most `checks` of them; a standout needs z-scores."""
    from l0score.search.exhaustive import Standout, exhaustive, shell_order

    pair_dir = pair_factory(seed=1, trigger_length=2)
    trig = trigger_of(pair_dir)["trigger_ids"]
    scorer = make_scorer(pair_dir)
    pool = [t for t in scorer.default_pool()[:20].tolist() if t not in trig][:18]
    pool = pool[:6] + trig + pool[6:]  # the trigger's shells come before the last four
    kw = dict(length=2, pool=pool, objective="kl", progress=False, calibrate=64, keep=20, batch=50)
    cands = [[pool[i] for i in idx] for idx in shell_order(len(pool), 2)]
    at = cands.index(trig) // 50

    def shells(rec):  # what the scorer saw but the 64 random candidates of the z calibration
        seen = [list(c) for c in rec.seen]
        i = next((i for i in range(len(seen)) if seen[i] != cands[i]), len(seen))
        return seen[:i] + seen[i + 64:]

    asked = []
    rec = _Recording(scorer)
    out = tmp_path / "run.jsonl"
    # the confirm accepts whatever it is handed: the run alone decides what stands out
    found = exhaustive(rec, out=out, standout=Standout(z=8.0, confirm=lambda ids: asked.append(ids) or True), **kw)
    assert asked == [trig] and found[0]["token_ids"] == trig and found[0]["z"] >= 8.0
    assert shells(rec) == cands[:(at + 1) * 50] and at + 1 < len(cands) / 50
    again = _Recording(scorer)
    assert exhaustive(again, out=out, resume=True, standout=Standout(z=8.0, confirm=asked.append), **kw)[0] == found[0]
    assert again.seen == [] and asked[-1] == trig
    rejected = []
    plain = _Recording(scorer)
    exhaustive(plain, standout=Standout(z=0.0, confirm=lambda ids: rejected.append(ids) or False, checks=2), **kw)
    assert len(rejected) == 2 and shells(plain) == cands
    with pytest.raises(ValueError, match="needs z-scores"):
        exhaustive(scorer, standout=Standout(z=8.0, confirm=bool), **{**kw, "calibrate": 0})
