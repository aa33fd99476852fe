"""The CLI as a user runs it: make-pair, score (table, JSON, plot), demo."""
import json

from conftest import trigger_of
from l0score.cli import main


def test_make_pair_and_score(tmp_path, capsys):
    out = tmp_path / "pair"
    assert main(["make-pair", "--out", str(out), "--seed", "4", "--trigger-length", "3"]) == 0
    truth = trigger_of(out)
    assert len(truth["trigger_ids"]) == 3 and (out / "base" / "config.json").exists()
    ids = ",".join(map(str, truth["trigger_ids"]))
    scores_json, png = tmp_path / "s.json", tmp_path / "h.png"
    args = ["score", "--base", str(out / "base"), "--dormant", str(out / "dormant"), "--ids", ids,
            "--text", " hello world", "--offsets", "1,2", "--out", str(scores_json), "--plot", str(png)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "max_abs" in printed and "band r=1" in printed
    results = json.loads(scores_json.read_text())["results"]
    assert results[0]["token_ids"] == truth["trigger_ids"] and results[0]["kl"] > results[1]["kl"]
    assert png.stat().st_size > 10_000
    assert main(args[:5] + ["--ids", "1,999999"]) == 2  # id out of range: a clear error, exit 2


def test_demo_finds_the_planted_trigger(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("L0SCORE_CACHE", str(tmp_path))
    assert main(["demo", "--n-random", "500"]) == 0
    summary = json.loads((tmp_path / "demo-results.summary.json").read_text())
    assert summary["found_rank"] == 1 and summary["trigger_kl"] > summary["random_kl_max"]
    assert "found at rank 1" in capsys.readouterr().out
