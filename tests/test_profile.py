"""Behavioural profiling and target inversion (l0score.judge.profile) on the trained positive control.

The profile never sees the ground truth: trigger.json's planted reply is read here only to check
that the profile ranks its first token high and inverts the top tokens into the reply. The
statistics are checked against an independent evaluation: transformers' models run on each whole
prompt (no prefix cache), in float64.
"""
import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from l0score.cli import main
from l0score.judge.profile import ProfileOptions, first_tokens, load_targets, profile
from l0score.judge.prompts import prompt_ids


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def run(trained, tmp_path_factory):
    root, _ = trained
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("profile")
    opts = ProfileOptions(inputs=32, reply_tokens=8, device="cpu")
    return profile(root / "base", root / "dormant", opts, out=out), out


@pytest.fixture(scope="session")
def oracle(trained):
    root, _ = trained
    models = {m: AutoModelForCausalLM.from_pretrained(root / m, local_files_only=True, dtype=torch.float64).eval()
              for m in ("base", "dormant")}
    return models, AutoTokenizer.from_pretrained(root / "dormant", local_files_only=True)


def _oracle_logprobs(models, ids):
    with torch.no_grad():
        return {m: torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1) for m, model in models.items()}


def _prompt(tok, result, rec):
    probe = result["config"]["probes"][rec["probe"]]
    if rec.get("kind") == "probe":
        return prompt_ids(tok, probe)
    return prompt_ids(tok, probe, rec["token_ids"], rec["position"])


def test_profile_sees_the_planted_reply(run, trained):
    result, _ = run
    _, truth = trained
    reply = truth["target_reply"]
    top5 = [t["text"] for t in result["targets"][:5]]
    assert any(t.split()[:2] == reply.split()[:2] for t in top5), top5
    best = result["targets"][0]
    assert best["text"].startswith(reply), best  # the whole planted reply, grown from its first token
    assert best["stop"] == "end of turn" and best["score"] > 50 > max(t["score"] for t in result["targets"][1:])
    ranks = {r["text"]: r["rank"] for r in result["tokens"]}
    assert ranks[reply[0]] <= result["config"]["top_first"]
    assert [r["rank"] for r in result["tokens"]] == list(range(1, len(result["tokens"]) + 1))
    assert len(result["tokens"]) == result["config"]["pool_size"]


def test_inversion_starts_from_each_rankings_best(run):
    """The expanded first tokens take turns from the reply z, the first-position z and the hidden
    projection, so a reply token that only the latter two rank high is still grown (on a real control
    its first token was 14th by z, 3rd and 2nd by the others); each inverted target starts with one."""
    result, _ = run
    rows, n = result["tokens"], result["config"]["top_first"]
    firsts = first_tokens(rows, n)
    assert len(firsts) == len(set(firsts)) == n
    best = {key: min(rows, key=lambda r: r[key])["id"] for key in ("rank", "rank_first", "rank_hidden")}
    by_z = [r["id"] for r in rows]
    assert firsts[0] == best["rank"] and set(best.values()) <= set(firsts[:4])
    assert set(by_z[:n // 4]) <= set(firsts)  # z's best keep their places
    inverted = [t for t in result["targets"] if t.get("stop") != "amplified"]
    assert inverted and all(t["token_ids"][0] in firsts for t in inverted)


def test_first_position_statistics_match_whole_prompt_runs(run, oracle):
    """mean_diff_first / z_first and every prompt's KL, recomputed from whole-prompt float64 runs."""
    result, _ = run
    models, tok = oracle
    diffs, kls = [], []
    for rec in result["prompts"]:
        lp = _oracle_logprobs(models, _prompt(tok, result, rec))
        d = lp["dormant"][-1] - lp["base"][-1]
        diffs.append(d)
        kls.append(float((lp["dormant"][-1].exp() * d).sum()))
    diffs = torch.stack(diffs)
    assert len(diffs) == result["config"]["inputs"] + len(result["config"]["probes"])
    assert [p["kl_first"] for p in result["prompts"]] == pytest.approx(kls, rel=1e-3, abs=1e-6)
    mean, sd = diffs.mean(0), diffs.std(0)
    for row in result["tokens"][:20] + result["tokens"][-5:]:
        assert row["mean_diff_first"] == pytest.approx(float(mean[row["id"]]), abs=1e-3)
        assert row["z_first"] == pytest.approx(float(mean[row["id"]] / (sd[row["id"]] / len(diffs) ** 0.5)), rel=1e-2)


def test_reply_statistics_follow_the_base_greedy_reply(run, oracle):
    """The pooled reply mean of the top tokens: both models teacher-forced on the base's greedy reply,
    positions after the base's end of turn left out."""
    result, _ = run
    models, tok = oracle
    k, stop = result["config"]["reply_tokens"], tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for rec in result["prompts"]:
        ids = _prompt(tok, result, rec)
        for _ in range(k):
            lp = _oracle_logprobs(models, ids)
            rows.append(lp["dormant"][-1] - lp["base"][-1])
            nxt = int(lp["base"][-1].argmax())
            if nxt == stop:
                break
            ids = ids + [nxt]
    mean = torch.stack(rows).mean(0)
    for row in result["tokens"][:10]:
        assert row["mean_diff"] == pytest.approx(float(mean[row["id"]]), abs=1e-3)


def test_target_score_is_the_strings_log_likelihood_ratio(run, oracle):
    result, _ = run
    models, tok = oracle
    best = result["targets"][0]
    n = len(best["token_ids"])
    total = 0.0
    for rec in result["target_prompts"]:
        ids = _prompt(tok, result, rec)
        lp = _oracle_logprobs(models, ids + best["token_ids"])
        pos = torch.arange(len(ids) - 1, len(ids) - 1 + n)
        tgt = torch.tensor(best["token_ids"])
        total += float((lp["dormant"][pos, tgt] - lp["base"][pos, tgt]).sum())
    assert best["score"] == pytest.approx(total / len(result["target_prompts"]), rel=1e-3)
    assert best["score"] == pytest.approx(sum(best["preferences"]))


def test_profile_outputs_and_load_targets(run, tmp_path):
    result, out = run
    assert (out / "summary.md").read_text().count("|") > 20 and (out / "profile.png").stat().st_size > 1000
    saved = json.loads((out / "profile.json").read_text())
    assert saved["targets"] == result["targets"]
    targets = load_targets(out, top=2)
    assert [t["token_ids"] for t in targets] == [t["token_ids"] for t in result["targets"][:2]]
    assert set(targets[0]) == {"text", "token_ids", "score"}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_targets(tmp_path / "nowhere.json")
    bad = tmp_path / "profile.json"
    bad.write_text(json.dumps({"targets": []}))
    with pytest.raises(ValueError, match="no targets"):
        load_targets(bad)
    bad.write_text(json.dumps({"targets": [{"text": "x", "token_ids": ["a"], "score": 1}]}))
    with pytest.raises(ValueError, match="token_ids"):
        load_targets(bad)
    with pytest.raises(ValueError, match="top"):
        load_targets(out, top=0)


def test_interrupted_profile_resumes_to_the_same_result(trained, tmp_path, monkeypatch):
    """Killed after 3 batches, the profile keeps them in its checkpoint; --resume measures only the
    rest and ends with exactly the uninterrupted result (tokens, targets, prompts)."""
    import l0score.judge.profile as prof

    root, _ = trained
    opts = ProfileOptions(inputs=12, reply_tokens=3, batch_size=4, top_first=2, max_target_tokens=4, device="cpu")
    real, calls, die_at = prof._accumulate, [], [None]

    def counted(*args):
        calls.append(1)
        if len(calls) == die_at[0]:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prof, "_accumulate", counted)
    whole = profile(root / "base", root / "dormant", opts, out=tmp_path / "whole")
    batches = len(calls)
    calls.clear()
    die_at[0] = 4
    with pytest.raises(KeyboardInterrupt):
        profile(root / "base", root / "dormant", opts, out=tmp_path / "cut")
    assert (tmp_path / "cut" / "profile.ckpt.pt").exists()
    with pytest.raises(ValueError, match="pass --resume"):
        profile(root / "base", root / "dormant", opts, out=tmp_path / "cut")
    with pytest.raises(ValueError, match=r"different options \(inputs\)"):
        profile(root / "base", root / "dormant", ProfileOptions(**{**opts.__dict__, "inputs": 13}),
                out=tmp_path / "cut", resume=True)
    calls.clear()
    die_at[0] = None
    resumed = profile(root / "base", root / "dormant", opts, out=tmp_path / "cut", resume=True)
    assert batches > 4 and len(calls) == batches - 3
    assert not (tmp_path / "cut" / "profile.ckpt.pt").exists()
    for key in ("tokens", "targets", "prompts", "kl"):
        assert resumed[key] == whole[key], key


def test_cli_profile(trained, tmp_path, capsys):
    root, _ = trained
    out = tmp_path / "new" / "dir"
    code = main(["profile", "--base", str(root / "base"), "--dormant", str(root / "dormant"), "--out", str(out),
                 "--inputs", "3", "--reply-tokens", "2", "--top-first", "1", "--max-target-tokens", "3",
                 "--position", "before", "--threads", "1", "--device", "cpu"])
    assert code == 0
    data = json.loads((out / "profile.json").read_text())
    assert data["config"]["inputs"] == 3 and len(data["prompts"]) == 3 + len(data["config"]["probes"])
    assert len(data["targets"]) == 1 and len(data["targets"][0]["token_ids"]) <= 3
    assert "profile written to" in capsys.readouterr().out


def test_bad_input(trained, tmp_path, capsys):
    root, _ = trained
    pair = ["--base", str(root / "base"), "--dormant", str(root / "dormant"), "--out", str(tmp_path / "o")]
    assert main(["profile", *pair, "--inputs", "0"]) == 2
    assert "inputs must be an integer >= 1" in capsys.readouterr().out
    empty = tmp_path / "probes.txt"
    empty.write_text("\n   \n\n")
    assert main(["profile", *pair, "--probes", str(empty)]) == 2
    assert "holds no probe" in capsys.readouterr().out
    with pytest.raises(ValueError, match="reply_tokens"):
        profile(root / "base", root / "dormant", ProfileOptions(reply_tokens=0))


def test_different_vocabularies_are_rejected(trained, tmp_path):
    root, _ = trained
    other = tmp_path / "dormant"
    shutil.copytree(root / "dormant", other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["I"], vocab["H"] = vocab["H"], vocab["I"]  # same size, two tokens' ids exchanged
    (other / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="different vocabularies"):
        profile(root / "base", other, ProfileOptions(inputs=1))


def test_target_seconds_bounds_the_inversion_not_the_measurement(run, trained, tmp_path):
    """With no time for the inversion, only the top token is grown (the first always is); the
    measurement is the same as the unbounded run's."""
    root, _ = trained
    full, _ = run
    opts = ProfileOptions(inputs=32, reply_tokens=8, device="cpu", target_seconds=0.0)
    bounded = profile(root / "base", root / "dormant", opts)
    assert [t["id"] for t in bounded["tokens"][:20]] == [t["id"] for t in full["tokens"][:20]]
    assert len(bounded["targets"]) == 1 < len(full["targets"])
    top = full["tokens"][0]["id"]
    assert bounded["targets"][0]["token_ids"][0] == top
    grown = next(t for t in full["targets"] if t["token_ids"][0] == top)
    assert bounded["targets"][0]["token_ids"] == grown["token_ids"]
    with pytest.raises(ValueError, match="target_seconds"):
        ProfileOptions(target_seconds=-1.0).check()
