"""Every command that writes creates its output directory, and `bench` runs on a pair whose tokenizer
has no chat template (raw template, with a note saying which rows changed and why)."""
import json
import shutil

import pytest

from conftest import trigger_of
from l0score.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def pair_args(pair):
    return ["--base", str(pair / "base"), "--dormant", str(pair / "dormant")]


def test_commands_create_their_output_directories(tiny_pair, tmp_path):
    ids = ",".join(map(str, trigger_of(tiny_pair)["trigger_ids"]))
    new = tmp_path / "not" / "yet"  # no command below may rely on it existing
    runs = {
        "score": (["score", *pair_args(tiny_pair), "--ids", ids, "--out", str(new / "score" / "s.json"),
                   "--plot", str(new / "plot" / "h.png")], [new / "score" / "s.json", new / "plot" / "h.png"]),
        "search beam": (["search", "beam", *pair_args(tiny_pair), "--length", "2", "--budget", "3000", "--width", "4",
                         "--seeds", "none", "--quiet", "--out", str(new / "beam" / "r.jsonl")],
                        [new / "beam" / "r.jsonl"]),
        "search pairs": (["search", "pairs", *pair_args(tiny_pair), "--top", "5", "--quiet",
                          "--out", str(new / "pairs" / "p.jsonl")], [new / "pairs" / "p.jsonl"]),
        "analyze": (["analyze", *pair_args(tiny_pair), "--out", str(new / "analyze" / "a")],
                    [new / "analyze" / "a" / "analysis.json"]),
        "verify": (["verify", *pair_args(tiny_pair), "--ids", ids, "--max-new-tokens", "2", "--position", "before",
                    "--sequential", "--out", str(new / "verify" / "report.json")],
                   [new / "verify" / "report.json", new / "verify" / "report.md"]),
        "make-pair": (["make-pair", "--out", str(new / "made" / "pair"), "--seed", "3"],
                      [new / "made" / "pair" / "trigger.json", new / "made" / "pair" / "base" / "config.json"]),
    }
    for name, (argv, files) in runs.items():
        assert main(argv) == 0, name
        for f in files:
            assert f.is_file() and f.stat().st_size > 0, (name, f)


def test_bench_without_chat_template(tiny_pair, tmp_path):
    pair = tmp_path / "nochat"
    shutil.copytree(tiny_pair, pair)
    for side in ("base", "dormant"):
        cfg = pair / side / "tokenizer_config.json"
        conf = json.loads(cfg.read_text())
        assert conf.pop("chat_template", None), "the tiny pair should ship a chat template"
        cfg.write_text(json.dumps(conf))
    out = tmp_path / "bench" / "out"
    assert main(["bench", "--quick", *pair_args(pair), "--out", str(out), "--no-build", "--no-triton",
                 "--no-extensions", "--candidates", "128", "--reps", "1", "--torch-candidates", "16",
                 "--transformers-candidates", "16"]) == 0
    res = json.loads((out / "latest.json").read_text())
    assert res["setting"]["template"] == "raw" and res["setting"]["prefix_len"] == 0
    for dtype in ("float32", "bfloat16"):
        assert res[f"native_{dtype}"]["template"] == "raw" and res["summary"][dtype]["cand_per_s"] > 0
    assert res["torch"]["cand_per_s"] > 0 and res["transformers"]["cand_per_s"] > 0
    assert any("no chat template" in n and "raw template" in n for n in res["notes"])
    assert "no chat template" in (out / "latest.md").read_text()
