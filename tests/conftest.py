"""Test-session setup. TRITON_INTERPRET must be set before anything imports triton."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
