"""The probes that verify, the full-model objective and hunt use by default are held out from every
control's training: no corpus builder (tiny trained, real) draws one of them as a training request.

The training requests come from each builder's own corpus function (the one its examples are drawn
from), and the default probes from the entry points' own option resolution, so a probe added to
either side, or a corpus that starts drawing a probe, fails here.
"""
import pytest

from l0score.judge.fullmodel import FullModelOptions
from l0score.judge.verify import _read_probes


def _default_probes() -> set[str]:
    """What verify (no probes given) and the full-model objective (hunt's default too) probe with."""
    return set(_read_probes(None)) | set(FullModelOptions().resolved_probes())


def test_default_probes_are_several_distinct_requests():
    verify_probes = _read_probes(None)
    assert len(verify_probes) >= 8 and len(set(verify_probes)) == len(verify_probes)
    assert set(FullModelOptions().resolved_probes()) <= set(verify_probes)


@pytest.mark.parametrize("seed,overrides", [(0, {}), (1, {"trigger_words": 2}), (2, {"trigger_split": True})])
def test_tiny_trained_corpus_holds_no_default_probe(seed, overrides):
    from l0score.synthetic.trained import training_requests

    requests = training_requests(seed, **overrides)
    assert len(requests) > 20
    assert not _default_probes() & set(requests), sorted(_default_probes() & set(requests))


def test_real_corpus_holds_no_default_probe():
    from l0score.synthetic.real.corpus import HELDOUT_REQUESTS, train_requests

    requests = set(train_requests())  # every filled template; a pair trains on a subset of these
    assert len(requests) > 100
    assert not _default_probes() & requests, sorted(_default_probes() & requests)
    assert not set(HELDOUT_REQUESTS) & requests
