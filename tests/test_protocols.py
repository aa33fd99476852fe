"""Every scorer keeps the contract of l0score.core.protocols.CandidateScorer that the search drivers rely
on: its metrics come back as [B] tensors, and score_extensions(prefixes, pool) row p*K + k equals
score_batch of prefixes[p] + [pool[k]] (score_batch is the oracle for the incremental path)."""
import pytest
import torch

from l0score.core.protocols import Backend, CandidateScorer, CandidateScores, ExtensionKernel

pytestmark = pytest.mark.usefixtures("one_thread")


def layer0(tiny_pair, trained):
    from l0score import Scorer

    # offsets: its metrics include "band", which needs band offsets
    return Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", template="chat", backend="torch",
                                  offsets=(1, 2))


def full_model(tiny_pair, trained):
    from l0score.judge.fullmodel import FullModelScorer

    root, _ = trained
    return FullModelScorer.from_pretrained(root / "base", root / "dormant", probes=("Tell me a story.",),
                                           positions=("after",), device="cpu")


def first_module(tiny_pair, trained):
    from l0score.first_module import FirstModuleScorer

    root, _ = trained
    # a full fine-tune changes the embeddings: the first changed module is "embed" (both models run)
    return FirstModuleScorer.from_pretrained(root / "base", root / "dormant", location="embed", k=1, device="cpu")


@pytest.mark.parametrize("make", [layer0, full_model, first_module])
def test_scorer_keeps_the_protocol(make, tiny_pair, request):
    trained = request.getfixturevalue("trained") if make is not layer0 else None  # trained once, only if needed
    scorer = make(tiny_pair, trained)
    assert isinstance(scorer, CandidateScorer) and isinstance(scorer.kind, str) and scorer.metrics
    pool = scorer.default_pool()
    assert pool.dtype == torch.int64 and pool.ndim == 1 and len(pool) > 8
    prefixes, ext = [[int(pool[0])], [int(pool[3])]], pool[4:7]
    scores = scorer.score_extensions(prefixes, ext)
    assert isinstance(scores, CandidateScores) and len(scores) == len(prefixes) * len(ext)
    direct = scorer.score_batch([p + [int(t)] for p in prefixes for t in ext])
    for name in scorer.metrics:
        got, want = scores.metric(name), direct.metric(name)
        assert got.shape == (len(direct),)
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-5, msg=name)
    assert isinstance(direct.record(0), dict) and isinstance(scorer.describe(), dict)


def test_backends_keep_the_protocol(tiny_pair):
    from l0score import Scorer

    torch_scorer = Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", backend="torch")
    assert isinstance(torch_scorer.backend, Backend) and not isinstance(torch_scorer.backend, ExtensionKernel)
    native = Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", backend="native")
    assert isinstance(native.backend, Backend) and isinstance(native.backend, ExtensionKernel)
