"""Every driver's run settings as one options dataclass (search.RunOptions): the same run whether the
settings come as `run=RunOptions(...)` or as keywords, and bad settings are refused before any scoring."""
import pytest
import torch

from l0score import Scorer
from l0score.search import RunOptions, coord


def test_run_options_equal_keywords(tiny_pair, tmp_path):
    scorer = Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", template="raw", backend="torch")
    pool = torch.arange(3, 60)
    settings = dict(pool=pool, budget=400, calibrate=32, seed=3, keep=10, progress=False)
    by_keywords = coord(scorer, length=2, restarts=2, objective="kl", out=tmp_path / "kw.jsonl", **settings)
    by_options = coord(scorer, length=2, restarts=2, objective="kl",
                       run=RunOptions(out=tmp_path / "opts.jsonl", **settings))
    assert [r["token_ids"] for r in by_options] == [r["token_ids"] for r in by_keywords] and len(by_keywords) == 10
    assert (tmp_path / "opts.jsonl").read_text() == (tmp_path / "kw.jsonl").read_text()
    with pytest.raises(TypeError, match="not both"):
        coord(scorer, length=2, objective="kl", run=RunOptions(), budget=10)


@pytest.mark.parametrize("field,value,message", [("keep", 0, "keep must be"), ("roundtrip", "x", "roundtrip must be"),
                                                 ("calibrate", -1, "calibrate must be"), ("budget", 0, "budget must be")])
def test_bad_run_options(field, value, message):
    with pytest.raises(ValueError, match=message):
        RunOptions(**{field: value}).validate()
