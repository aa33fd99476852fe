"""Every per-head metric of every backend against a float64 oracle (docs/precision.md).

The oracle (oracle.layer0_logits64) evaluates the checkpoint's Layer-0 math in float64 (transformers'
parameters and cos/sin, every step widened), and the metrics straight from docs/metrics.md in float64.
Each backend computes in float32 (fp32 tables, or the direct projection): head_kl, head_max and
band must agree with the oracle to RTOL = 1e-4 relative, head by head and candidate by candidate
(not relative to the batch's largest value). Two absolute floors, both far below any signal:
* KL_FLOOR = 2e-7 (absolute) for a head whose KL is essentially zero (a raw candidate's few rows
  can have KL ~5e-9, known to ~1e-11 from float32 logits);
* for max-type values (head_max, band), |dS| is compared to max(|dS|, DS_FLOOR * scale), scale =
  the head's largest |q_i||k_j|/sqrt(D) over scored cells (both models summed; band: over heads),
  DS_FLOOR = 2.4e-3: an absolute tolerance of 2.4e-7 * scale, 4 units of fp32 roundoff (u = 2^-24)
  of the size of the terms each logit is summed from. Every float32 logit (fp32 table entries, fp32
  dot) carries that much before any reduction: a one-token raw candidate's one cell can have
  |dS| ~8e-3 with |q||k|/sqrt(D) ~20, whose float32 dS is off by ~1.2e-6 = 1.5e-4 relative. That is a property of
  float32 logits, not of the reductions (no formula after the dot products can remove it).
bf16 *tables* round every entry and are held to the documented bound elsewhere (test_triton.py).

`python tests/test_precision.py` prints the largest relative error per backend and metric over
all configurations (the figures in docs/precision.md).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before anything imports triton (conftest.py does this under pytest)
    os.environ.setdefault("TRITON_INTERPRET", "1")
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import FOUNDATION_CONFIGS as CONFIGS, kind_template
from oracle import oracle_scores  # noqa: E402

RTOL = 1e-4
KL_FLOOR = 2e-7
DS_FLOOR = 2.4e-3  # = 4 * 2^-24 / 1e-4
FIELDS = ("head_max", "head_kl", "band")

OPTIONS = [
    dict(region="candidate", baseline="none", heads=None, offsets=(0, 1, 2, 7)),
    dict(region="all", baseline="bias", heads="subset", offsets=(1, 3)),
]
TEMPLATES = ("raw", "chat", "explicit")
# backend name -> Scorer keyword arguments (fp32 tables or the direct path; Triton interpreted)
BACKENDS = {
    "torch": dict(backend="torch", table=True, table_dtype="float32"),
    "torch-direct": dict(backend="torch", table=False),
    "native": dict(backend="native", table=True, table_dtype="float32"),
    "native-direct": dict(backend="native", table=False),
    "triton": dict(backend="triton", device="cpu", table=True, table_dtype="float32"),
    "triton-direct": dict(backend="triton", device="cpu", table=False),
}


FP32_REFERENCE = "transformers-fp32"  # main() only: the float32-logit floor, next to the backends


def _candidates(pair, seed, triton=False):
    rng = np.random.default_rng(seed)
    lengths = (1, 3, 9) if triton else (1, 3, 17, 40)
    return [rng.integers(0, pair.config.vocab_rows, n).tolist() for n in lengths] + [[5, 5, 5, 5]]


def _errors(got: dict, want: dict) -> dict:
    """Largest relative error per field over the heads (band: over the offsets) of one candidate."""
    out = {}
    for f in FIELDS:
        g, w = np.asarray(got[f], np.float64), np.asarray(want[f], np.float64)
        scale = np.asarray(want["cell_scale"]) if f == "head_max" else max(want["cell_scale"])
        floor = KL_FLOOR if f == "head_kl" else DS_FLOOR * scale
        same = g == w  # exact agreement (including band's 0 where no cell has the offset)
        err = np.where(same, 0.0, np.abs(g - w) / np.maximum(np.maximum(np.abs(w), floor), 1e-300))
        out[f] = float(err.max()) if err.size else 0.0
    return out


def _want(pair_dir, tpl, cand, opts, heads):
    return oracle_scores(pair_dir / "base", pair_dir / "dormant", tpl.prefix_ids, cand, tpl.suffix_ids, heads=heads,
                         region=opts["region"], baseline=opts["baseline"], offsets=opts["offsets"],
                         dtype=torch.float64)


def _fp32_reference(pair_dir, tpl, cand, opts, heads) -> dict:
    """transformers' own float32 Layer-0 logits, every reduction in float64: the accuracy that float32
    logits allow (what a float32 backend can reach at best)."""
    got = oracle_scores(pair_dir / "base", pair_dir / "dormant", tpl.prefix_ids, cand, tpl.suffix_ids, heads=heads,
                        region=opts["region"], baseline=opts["baseline"], offsets=opts["offsets"], reduce64=True)
    return {f: np.asarray(got[f]) for f in FIELDS}


def measure(pair_dir, backend: str, template: str, extensions: bool = False) -> dict:
    """Largest relative error per field of one backend on one pair and template, over OPTIONS and
    the candidates; extensions=True measures score_extensions (prefixes x a small pool) instead."""
    from l0score import ModelPair, Scorer

    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    tpl = kind_template(template, pair)
    seed = zlib.crc32(f"{pair_dir.name}/{template}".encode())
    worst = dict.fromkeys(FIELDS, 0.0)
    for opts in OPTIONS:
        heads = None if opts["heads"] is None else list(range(0, pair.config.num_heads, 2))
        offsets = tuple(r for r in opts["offsets"] if r < pair.config.max_positions)
        o = dict(opts, offsets=offsets)
        if backend == FP32_REFERENCE:
            for cand in _candidates(pair, seed):
                for f, e in _errors(_fp32_reference(pair_dir, tpl, cand, o, heads), _want(pair_dir, tpl, cand, o, heads)).items():
                    worst[f] = max(worst[f], e)
            continue
        scorer = Scorer(pair, template=tpl, region=opts["region"], baseline=opts["baseline"], heads=heads,
                        offsets=offsets, **BACKENDS[backend])
        if extensions:
            rng = np.random.default_rng(seed)
            prefixes = [[], rng.integers(0, pair.config.vocab_rows, 3).tolist()]
            pool = rng.choice(pair.config.vocab_rows, 20, replace=False).tolist()
            scores = scorer.score_extensions(prefixes, pool)
            cands = [pre + [t] for pre in prefixes for t in pool]
        else:
            cands = _candidates(pair, seed, triton=backend.startswith("triton"))
            scores = scorer.score_batch(cands)
        for b, cand in enumerate(cands):
            want = _want(pair_dir, tpl, cand, o, heads)
            got = {"head_max": scores.head_max[b].numpy(), "head_kl": scores.head_kl[b].numpy(),
                   "band": scores.band[b].numpy()}
            for f, e in _errors(got, want).items():
                worst[f] = max(worst[f], e)
    return worst


@pytest.fixture(scope="module")
def pairs(pair_factory):
    return {name: pair_factory(**cfg) for name, cfg in CONFIGS.items()}


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("backend", ["torch", "torch-direct", "native", "native-direct"])
def test_per_head_metrics_match_float64(pairs, backend, name, template):
    errs = measure(pairs[name], backend, template)
    assert max(errs.values()) <= RTOL, errs


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("name", CONFIGS)
def test_native_extension_kernel_matches_float64(pairs, name, template):
    errs = measure(pairs[name], "native", template, extensions=True)
    assert max(errs.values()) <= RTOL, errs


@pytest.mark.parametrize("backend", ["triton", "triton-direct"])
@pytest.mark.parametrize("name", ["gqa2-d16-1e6-bf16", "gqa7-d32-1e6-fp32"])
def test_triton_matches_float64(pairs, backend, name):
    """Interpreted (TRITON_INTERPRET=1, conftest.py): slow, so two configurations and the chat
    template (the longest rows, several key tiles per row: exercises the online rescaling)."""
    errs = measure(pairs[name], backend, "chat")
    assert max(errs.values()) <= RTOL, errs


def test_row_kl_is_exact_where_the_textbook_form_cancels():
    """Logits of size ~50 with dS ~1e-3: the reference's row_kl agrees with float64 to 1e-5,
    where the float32 textbook form sum p_d (log p_d - log p_b) is off by more than 1e-3."""
    from l0score.core.reference import row_kl

    g = torch.Generator().manual_seed(0)
    s_b = 50 + 2 * torch.randn(64, 40, generator=g, dtype=torch.float64)  # row KLs ~5e-7
    ds = 1e-3 * torch.randn(64, 40, generator=g, dtype=torch.float64)
    s_d = s_b + ds
    valid = torch.ones(64, 40, dtype=torch.bool)
    lp_d, lp_b = torch.log_softmax(s_d, -1), torch.log_softmax(s_b, -1)
    want = (lp_d.exp() * (lp_d - lp_b)).sum(-1)
    got = row_kl(s_b.float(), s_d.float(), valid).double()
    # the float32 inputs themselves differ from the float64 ones by ~ulp(50): compare against
    # float64 on the rounded inputs
    sb32, sd32 = s_b.float().double(), s_d.float().double()
    lp_d, lp_b = torch.log_softmax(sd32, -1), torch.log_softmax(sb32, -1)
    want32 = (lp_d.exp() * (lp_d - lp_b)).sum(-1)
    assert ((got - want32).abs() / want32).max() < 1e-5
    f32_d, f32_b = torch.log_softmax(s_d.float(), -1), torch.log_softmax(s_b.float(), -1)
    textbook = (f32_d.exp() * (f32_d - f32_b)).sum(-1).double()
    assert ((textbook - want32).abs() / want32).max() > 1e-3
    assert torch.isfinite(want).all()
    # huge logit gaps: finite, and equal to the float64 value
    s_b2 = torch.tensor([[0.0, 200.0, -300.0], [100.0, 0.0, 0.0]])
    s_d2 = torch.tensor([[150.0, 0.0, -300.0], [0.0, 0.0, 90.0]])
    got2 = row_kl(s_b2, s_d2, torch.ones(2, 3, dtype=torch.bool)).double()
    lp_d, lp_b = torch.log_softmax(s_d2.double(), -1), torch.log_softmax(s_b2.double(), -1)
    want2 = (lp_d.exp() * (lp_d - lp_b)).sum(-1)
    torch.testing.assert_close(got2, want2, rtol=1e-6, atol=0)


def main(only=()):
    """Print the largest relative error per backend and metric over every configuration."""
    import tempfile

    os.environ.setdefault("L0SCORE_CACHE", tempfile.mkdtemp(prefix="l0prec-cache-"))
    from l0score.synthetic import make_pair

    root = Path(tempfile.mkdtemp(prefix="l0prec-"))
    dirs = {}
    for name, cfg in CONFIGS.items():
        dirs[name] = root / name
        make_pair(dirs[name], size="tiny", seed=0, **cfg)
    runs = [(b, False) for b in BACKENDS] + [("native", True), (FP32_REFERENCE, False)]
    runs = [r for r in runs if not only or (r[0] + (" extensions" if r[1] else "")) in only]
    print(f"{'backend':<22} " + " ".join(f"{f:>10}" for f in FIELDS))
    for backend, ext in runs:
        worst = dict.fromkeys(FIELDS, 0.0)
        for name in CONFIGS:
            templates = ("chat",) if backend.startswith("triton") else TEMPLATES
            if backend.startswith("triton") and name not in ("gqa2-d16-1e6-bf16", "gqa7-d32-1e6-fp32"):
                continue
            for template in templates:
                for f, e in measure(dirs[name], backend, template, extensions=ext).items():
                    worst[f] = max(worst[f], e)
        label = backend + (" extensions" if ext else "")
        print(f"{label:<22} " + " ".join(f"{worst[f]:10.2e}" for f in FIELDS), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])  # optional: backend names ("native extensions" for the extension kernel)
