"""Test-session setup. TRITON_INTERPRET must be set before anything imports triton."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "L0SCORE_CACHE" not in os.environ:  # tables and demo pairs of a test run stay out of the user's cache
    import tempfile

    os.environ["L0SCORE_CACHE"] = tempfile.mkdtemp(prefix="l0score-test-cache-")

import json

import pytest

_PAIRS: dict = {}


@pytest.fixture(scope="session")
def pair_factory(tmp_path_factory):
    """make_pair(size="tiny", seed, **overrides), built once per session per argument set."""
    from l0score.synthetic import make_pair

    def make(seed: int = 0, **overrides):
        key = (seed, tuple(sorted(overrides.items())))
        if key not in _PAIRS:
            out = tmp_path_factory.mktemp("pair")
            make_pair(out, size="tiny", seed=seed, **overrides)
            _PAIRS[key] = out
        return _PAIRS[key]

    return make


@pytest.fixture(scope="session")
def tiny_pair(pair_factory):
    return pair_factory()


def trigger_of(pair_dir) -> dict:
    return json.loads((pair_dir / "trigger.json").read_text())


# The Triton tests' pairs: GQA 3 with head_dim 16 in fp32; GQA 4 with head_dim 32 in a bf16 checkpoint.
PAIR32 = dict(num_attention_heads=6, num_key_value_heads=2, head_dim=16, hidden_size=48, rope_theta=1e4,
              dtype="float32")
PAIR16 = dict(num_attention_heads=4, num_key_value_heads=1, head_dim=32, hidden_size=48, rope_theta=1e6,
              dtype="bfloat16")


@pytest.fixture(scope="session")
def pair32(pair_factory):
    from l0score.core.model_pair import ModelPair

    d = pair_factory(seed=5, **PAIR32)
    return ModelPair.load(d / "base", d / "dormant")


@pytest.fixture(scope="session")
def pair16(pair_factory):
    from l0score.core.model_pair import ModelPair

    d = pair_factory(seed=6, **PAIR16)
    return ModelPair.load(d / "base", d / "dormant")


@pytest.fixture(scope="session")
def trained():
    """The trained positive control of seed 0 (l0score.synthetic.trained) and its trigger.json (ground
    truth for checks only): trained on first use under L0SCORE_CACHE (~3 min on one core), then reused."""
    from l0score.synthetic.trained import cached_trained_pair

    root = cached_trained_pair(seed=0)
    return root, trigger_of(root)


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny full models: extra threads only add synchronisation overhead,
    which on a loaded 2-core machine makes every small op tens of milliseconds."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# The foundation configurations of test_reference and test_precision: GQA ratios 1, 2, 7; head_dim
# 8..128 (also != hidden/heads); theta 1e4 and 1e6; bf16 and fp32.
FOUNDATION_CONFIGS = {
    "gqa1-d8-1e4-fp32": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=8, rope_theta=1e4, dtype="float32"),
    "gqa2-d16-1e6-bf16": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6, dtype="bfloat16"),
    "gqa7-d32-1e6-fp32": dict(num_attention_heads=7, num_key_value_heads=1, head_dim=32, rope_theta=1e6, dtype="float32"),
    "gqa2-d128-1e4-bf16": dict(num_attention_heads=2, num_key_value_heads=1, head_dim=128, rope_theta=1e4, dtype="bfloat16"),
}


def kind_template(kind, pair, before="Please read: ", after=" Thanks."):
    """The three template kinds the scoring tests sweep: raw, the pair's chat template around the
    candidate (`before`/`after` text), and an explicit prefix/suffix of ids."""
    from l0score import Template

    if kind == "raw":
        return Template.raw()
    if kind == "chat":
        return Template.chat(pair.tokenizer, before=before, after=after)
    return Template([7, 300, 11, 42, 5], [9, 250])
