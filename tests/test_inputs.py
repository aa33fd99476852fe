"""Bad input to score_batch and the Scorer options raises a clear error naming the problem."""
import numpy as np
import pytest
import torch

from l0score import Scorer, Template


@pytest.fixture(scope="module")
def scorer(tiny_pair):
    return Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", backend="torch", template="chat")


@pytest.mark.parametrize("token_ids, lengths, error, pattern", [
    ([[1, 2], [3, 10**6]], None, ValueError, r"candidate 1, token 1: id 1000000 outside \[0, \d+\)"),
    ([[1, 2], [3, -4]], None, ValueError, r"candidate 1, token 1: id -4 outside"),
    ([[1, 2], []], None, ValueError, r"candidate 1: empty candidate"),
    ([[1, 2], [3] * 600], None, ValueError, r"candidate 1: 600 tokens exceed the \d+ positions left by max_position_embeddings"),
    ([[1.0, 2.0]], None, TypeError, r"candidate 0: token ids must be integers, got dtype float64"),
    ([["a", "b"]], None, TypeError, r"candidate 0: token ids must be integers"),
    (["hello"], None, TypeError, r"candidate 0: expected a sequence of integer token ids, got a string"),
    ([1, 2, 3], None, TypeError, r"candidate 0: expected a sequence of token ids, got the scalar 1"),
    ([[[1, 2]]], None, TypeError, r"candidate 0: expected a flat sequence of token ids \(wrong nesting\)"),
    ([[True, False]], None, TypeError, r"candidate 0: token ids must be integers, got dtype bool"),
    (np.array([[1.5, 2.0]]), None, TypeError, r"token_ids must be integers, got dtype float64"),
    (torch.tensor([[1.0, 2.0]]), None, TypeError, r"token_ids must be an integer tensor, got dtype torch.float32"),
    (np.array([1, 2, 3]), None, TypeError, r"2-D \[batch, length\]"),
    (np.array([[1, 2], [3]], dtype=object), None, TypeError, r"ragged array"),
    (np.array([[1, 2, 3]]), [4], ValueError, r"candidate 0: length 4 exceeds the array width 3"),
    (np.array([[1, 2, 3]]), [1, 2], ValueError, r"lengths must have one entry per candidate"),
    (np.array([[1, 2, 3]]), [0], ValueError, r"candidate 0: empty candidate"),
    ([], None, ValueError, r"no candidates"),
    ("123", None, TypeError, r"token_ids must be a list of candidates"),
])
def test_bad_token_ids(scorer, token_ids, lengths, error, pattern):
    with pytest.raises(error, match=pattern):
        scorer.score_batch(token_ids, lengths=lengths)


def test_nothing_is_clipped_at_the_position_limit(scorer):
    room = scorer.pair.config.max_positions - len(scorer.template)
    assert len(scorer.score_batch([[5] * room])) == 1
    with pytest.raises(ValueError, match=f"{room + 1} tokens exceed"):
        scorer.score_batch([[5] * (room + 1)])


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(backend="cuda"), ValueError, "backend must be one of"),
    (dict(region="prefix"), ValueError, "region must be one of"),
    (dict(baseline="mean"), ValueError, "baseline must be one of"),
    (dict(heads=[0, 99]), ValueError, r"head 99 outside"),
    (dict(heads=[1, 1]), ValueError, "distinct head ids"),
    (dict(heads=["a"]), TypeError, "heads must be integers"),
    (dict(offsets=[-1]), ValueError, "band offset -1 outside"),
    (dict(template="markdown"), TypeError, "template must be"),
    (dict(template=Template([10**6], [])), ValueError, r"template prefix id 1000000 outside"),
    (dict(table_dtype="int8"), ValueError, "table dtype must be one of"),
])
def test_bad_options(tiny_pair, kwargs, error, pattern):
    kwargs = {"backend": "torch", **kwargs}
    with pytest.raises(error, match=pattern):
        Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", **kwargs)


def test_bad_template_ids():
    with pytest.raises(ValueError, match="negative id"):
        Template([-1], [])
    with pytest.raises(TypeError, match="integer token ids"):
        Template(["x"], [])
