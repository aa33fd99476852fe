"""Inputs that used to end in a traceback or run silently on the wrong thing (issue 24, item 5):
each gives the same clear error in every command that reads it."""
import json
import shutil

import pytest

from l0score.core.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


def _copy(pair_dir, dest):
    for side in ("base", "dormant"):
        shutil.copytree(pair_dir / side, dest / side)
    return dest


@pytest.fixture(scope="module")
def truncated(tiny_pair, tmp_path_factory):
    """The tiny pair with the dormant's last shard cut in half (the shard past Layer 0)."""
    root = _copy(tiny_pair, tmp_path_factory.mktemp("truncated"))
    shard = sorted((root / "dormant").glob("*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return root


def _verify(root, out):
    from l0score.judge.verify import verify

    return verify(root / "base", root / "dormant", ["hello"], ["Say hello."], max_new_tokens=2, progress=False,
                  null_samples=0, out=out / "v.json")


def _profile(root, out):
    from l0score.judge.profile import ProfileOptions, profile

    return profile(root / "base", root / "dormant", ProfileOptions(inputs=2), out=out / "p")


def _hunt(root, out):
    from l0score.hunt import HuntOptions, hunt

    return hunt(root / "base", root / "dormant", out / "h", HuntOptions(seconds=30, profile=False, progress=False))


def _score(root, out):
    from l0score import Scorer

    return Scorer.from_pretrained(root / "base", root / "dormant")


@pytest.mark.parametrize("command", [_verify, _profile, _hunt])
def test_truncated_safetensors_is_a_clear_error(truncated, tmp_path, command):
    with pytest.raises(CheckpointError, match="corrupt or unreadable safetensors file"):
        command(truncated, tmp_path)
    assert not (tmp_path / "h" / "report.json").exists()


@pytest.fixture(scope="module")
def swapped(tiny_pair, tmp_path_factory):
    """The tiny pair whose dormant tokenizer maps two ordinary tokens to each other's ids."""
    root = _copy(tiny_pair, tmp_path_factory.mktemp("swapped"))
    path = root / "dormant" / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    a, b = "Ġkettle" if "Ġkettle" in vocab else list(vocab)[300], list(vocab)[301]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(tok))
    return root


@pytest.mark.parametrize("command", [_verify, _score])
def test_tokenizers_with_different_ids_are_refused(swapped, tmp_path, command):
    with pytest.raises(ValueError, match="map tokens to different ids"):
        command(swapped, tmp_path)


@pytest.mark.parametrize("keep", [-1, 0])
def test_search_keep_must_be_positive(tiny_pair, keep):
    from l0score.search import beam

    scorer = _score(tiny_pair, None)
    with pytest.raises(ValueError, match="keep must be a positive number"):
        beam(scorer, length=2, objective="kl", keep=keep, budget=10, progress=False)


def test_every_docs_page_is_reachable_from_the_readme():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    missing = [p.name for p in sorted((root / "docs").glob("*.md")) if f"(docs/{p.name}" not in readme]
    assert missing == []


def test_the_readme_test_command_installs_what_the_suite_needs():
    """The README's test command is CI's script, which installs Chromium for the HTML report's test."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    assert "\nbash .ci/run\n" in (root / "README.md").read_text()
    script = (root / ".ci" / "run").read_text()
    assert "chromium" in script and "pytest" in script


def test_hunt_metric_is_checked_before_any_work_and_tf_kl_is_supported(tiny_pair, tmp_path):
    from l0score.hunt import Hunt, HuntOptions, hunt
    from l0score.search.objective import Objective

    for bad in ("bogus", "target", "kl=x"):
        with pytest.raises(ValueError, match="metric"):
            hunt(tiny_pair / "base", tiny_pair / "dormant", tmp_path / bad, HuntOptions(metric=bad, progress=False))
        assert not (tmp_path / bad).exists()
    with pytest.raises(ValueError, match="reply_tokens"):
        HuntOptions(metric="tf_kl", reply_tokens=0).check()
    h = Hunt(tiny_pair / "base", tiny_pair / "dormant", tmp_path / "tf", HuntOptions(metric="kl=1,tf_kl=0.5",
                                                                                       progress=False), False)
    assert "tf_kl" in h.fm().metrics  # the objective the search stages parse against this scorer
    values = h.fm().score_batch([[300, 301]])
    assert float(values.metric("tf_kl")[0]) > 0  # two different models disagree on the teacher-forced reply
    assert Objective.parse("kl=1,tf_kl=0.5", h.fm().metrics).value(
        {m: float(values.metric(m)[0]) for m in ("kl", "tf_kl")}) > 0


def test_error_line_is_not_wrapped_at_the_terminal_width(tiny_pair, tmp_path, capsys, monkeypatch):
    from l0score.cli import main
    from l0score.cli.args import console

    monkeypatch.setattr(console, "width", 30)
    probes = tmp_path / "blank.txt"
    probes.write_text("\n \n")
    assert main(["verify", "--base", str(tiny_pair / "base"), "--dormant", str(tiny_pair / "dormant"), "--text", "x",
                 "--probes", str(probes), "--out", str(tmp_path / "r.json")]) == 2
    out = capsys.readouterr().out
    assert f"error: probes file {probes} holds no probe (one prompt per line)" in out.splitlines()
    assert main(["verify", "--base", str(tmp_path / "no [bold]such[/bold] dir"), "--dormant", str(tiny_pair / "dormant"),
                 "--text", "x", "--out", str(tmp_path / "r.json")]) == 2
    assert "no [bold]such[/bold] dir" in capsys.readouterr().out  # the message as written, not as rich markup


@pytest.mark.parametrize("flag", ["--batch-size=-1", "--batch-size=0", "--null-samples=-2"])
def test_verify_cli_bad_counts(tiny_pair, tmp_path, capsys, flag):
    from l0score.cli import main

    assert main(["verify", "--base", str(tiny_pair / "base"), "--dormant", str(tiny_pair / "dormant"), "--text", "x",
                 flag, "--out", str(tmp_path / "r.json")]) == 2
    assert "must be an integer >=" in capsys.readouterr().out


def test_search_cli_keep_and_empty_budget(tiny_pair, tmp_path, capsys):
    from l0score.cli import main

    pair = ["--base", str(tiny_pair / "base"), "--dormant", str(tiny_pair / "dormant")]
    assert main(["search", "beam", *pair, "--length", "3", "--keep", "-1", "--out", str(tmp_path / "k.jsonl"),
                 "--quiet"]) == 2
    assert "keep must be a positive number" in capsys.readouterr().out
    assert main(["search", "beam", *pair, "--length", "4", "--budget", "500", "--out", str(tmp_path / "b.jsonl"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "no results" in out and "--budget 500" in out and "scores every pool token for each fragment" in out


def test_search_gcg_positions_both_is_before_and_after(tiny_pair, tmp_path, capsys):
    from l0score.cli import main

    out = tmp_path / "g.jsonl"
    systems = tmp_path / "systems.txt"
    systems.write_text("<default>\nYou are a pirate.\n")
    assert main(["search", "gcg", "--base", str(tiny_pair / "base"), "--dormant", str(tiny_pair / "dormant"),
                 "--objective", "full", "--positions", "both", "--length", "2", "--steps", "1", "--batch", "4",
                 "--calibrate", "0", "--system-prompts", str(systems), "--out", str(out), "--quiet"]) == 0, \
        capsys.readouterr().out
    ckpt = json.loads(out.with_name(out.name + ".ckpt.json").read_text())
    assert ckpt["options"]["positions"] == ["before", "after"]
    assert ckpt["options"]["systems"] == [None, "You are a pirate."]  # the objective runs under both


def test_search_cli_allow_template_tokens(tiny_pair, tmp_path, capsys):
    """The pool of a search leaves the chat template's pieces out; the flag puts them back."""
    from l0score.cli import main
    from l0score.core.template import template_structure
    from l0score.core.model_pair import load_tokenizer

    tok = load_tokenizer(tiny_pair / "dormant")
    assistant = tok.encode("assistant", add_special_tokens=False)[0]
    allow = tmp_path / "allow.txt"
    allow.write_text(f"{assistant}\n300\n301\n")
    pair = ["--base", str(tiny_pair / "base"), "--dormant", str(tiny_pair / "dormant")]
    common = ["--length", "2", "--allow-list", str(allow), "--roundtrip", "off", "--quiet"]
    assert main(["search", "coord", *pair, *common, "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "piece of the chat template" in capsys.readouterr().out
    assert main(["search", "coord", *pair, *common, "--allow-template-tokens", "--out", str(tmp_path / "b.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert any(assistant in r["token_ids"] for r in rows)
    assert assistant in template_structure(tok).ids


def test_demo_searches_lengths_2_to_5_before_reading_the_trigger(tmp_path, monkeypatch):
    """The demo searches every length a user would try; the trigger file is read only to judge."""
    import l0score.demo as demo
    from l0score.synthetic.cached import demo_pair

    pair = tmp_path / "pair"
    for side in ("base", "dormant"):
        shutil.copytree(demo_pair() / side, pair / side)  # no trigger.json
    monkeypatch.setattr(demo, "demo_pair", lambda: pair)
    out = tmp_path / "r.jsonl"
    with pytest.raises(FileNotFoundError, match="trigger.json"):
        demo.run_demo(n_random=10, out=str(out))
    lengths = {len(json.loads(x)["token_ids"]) for x in out.read_text().splitlines()}
    assert lengths == {2, 3, 4, 5}
