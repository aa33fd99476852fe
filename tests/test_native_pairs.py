"""The native pair scan (kernels/cpu/pair_scan.cpp) against the torch pair scan.

`pair_scan(scorer, ...)` on backend="native" dispatches each (head, offset) to the C++ kernel; it
must return the triples of pairs.py's torch code on the same table values (ranks compared where the
reference is tie-free, |values| at every rank; see test_triton_pairs). Pools are odd-sized so the
last panel of 16 tokens is partial; duplicate tokens make exact ties.
"""
import numpy as np
import pytest
import torch

from l0score import Scorer, _native
from l0score.reference import rope_angles, rotate
from l0score.search import pair_scan
from test_triton_pairs import OFFSETS, RTOL, _count_calls, _pool, _torch_path, assert_same_scan


@pytest.mark.parametrize("baseline, n_pool, top, heads", [
    ("none", 131, 40, None),
    ("bias", 97, 1, [1, 5]),
    ("bias", 53, 17, [0, 3, 4]),
])
def test_pair_scan_native_equals_torch(pair32, baseline, n_pool, top, heads):
    pool = _pool(pair32, n_pool, seed=n_pool)
    scorer = Scorer(pair32, backend="native", template="raw", heads=heads, baseline=baseline)
    calls = _count_calls(scorer)
    got = pair_scan(scorer, pool, offsets=OFFSETS, top=top, progress=False)
    assert len(calls) == len(scorer.heads) * len(OFFSETS)  # every (head, offset) went to the kernel
    want = pair_scan(_torch_path(scorer), pool, offsets=OFFSETS, top=top, progress=False)
    assert_same_scan(got, want)


def test_pair_scan_native_bf16_table(pair16):
    pool = _pool(pair16, 71, seed=3)
    scorer = Scorer(pair16, backend="native", template="raw", baseline="bias", table_dtype="bfloat16")
    assert scorer.backend.table_dtype == "bfloat16"
    got = pair_scan(scorer, pool, offsets=OFFSETS, top=23, progress=False)
    want = pair_scan(_torch_path(scorer), pool, offsets=OFFSETS, top=23, progress=False)
    assert_same_scan(got, want)


def test_pair_scan_native_direct_path(pair32):
    """No table: the pool's rows of each head are projected once and scanned."""
    pool = _pool(pair32, 61, seed=7)
    scorer = Scorer(pair32, backend="native", template="raw", heads=[2, 3], table=False)
    assert scorer.backend.table is None
    got = pair_scan(scorer, pool, offsets=(0, 5), top=13, progress=False)
    want = pair_scan(Scorer(pair32, backend="torch", template="raw", heads=[2, 3], table=False), pool,
                     offsets=(0, 5), top=13, progress=False)
    assert_same_scan(got, want)


@pytest.mark.parametrize("n, top, offset", [(37, 2000, 3), (29, 50, 0), (40, 7, 2)])
def test_kernel_against_dense(pair32, n, top, offset):
    """Every cell of one (head, offset) densely in torch: the kernel returns the true top cells (all
    of them when top exceeds the cell count), each with its own value; duplicates tie exactly."""
    scorer = Scorer(pair32, backend="native", template="raw")
    cfg = scorer.pair.config
    pool = torch.cat((_pool(pair32, n - 3, seed=n), torch.tensor([4, 4, 4])))
    head, shift = 5, 0.125
    values, qi, ki = scorer.backend.pair_topk(pool, head, offset, top, shift)
    qb, kb, qd, kd = scorer.backend.lookup(pool)
    cos, sin = rope_angles(torch.tensor([offset]), cfg.head_dim, cfg.rope_theta)
    g = head // cfg.group
    dense = (rotate(qd[:, head], cos, sin) @ kd[:, g].T - rotate(qb[:, head], cos, sin) @ kb[:, g].T) \
        * cfg.head_dim ** -0.5 - shift
    if offset == 0:
        dense = torch.where(torch.eye(n, dtype=torch.bool), dense, torch.nan)
    flat = dense.flatten()
    flat = flat[~flat.isnan()]
    k = min(top, flat.numel())
    want = torch.sort(flat.abs(), descending=True).values[:k]
    assert values.shape == (k,)
    atol = 0.1 * RTOL * float(want[0])
    torch.testing.assert_close(values.abs(), want, rtol=RTOL, atol=atol)
    torch.testing.assert_close(values, dense[qi, ki], rtol=RTOL, atol=atol)
    assert len(set(zip(qi.tolist(), ki.tolist()))) == k
    assert bool((values.abs()[:-1] >= values.abs()[1:]).all())  # best first


def test_kernel_bad_arguments(pair32):
    backend = Scorer(pair32, backend="native", template="raw").backend
    with pytest.raises(ValueError, match="pool token ids"):
        backend.pair_topk(torch.tensor([1, 10**7]), 0, 1, 5)
    with pytest.raises(ValueError, match="head 99"):
        backend.pair_topk(torch.tensor([1, 2]), 99, 1, 5)
    with pytest.raises(ValueError, match="top must be"):
        backend.pair_topk(torch.tensor([1, 2]), 0, 1, 0)
    with pytest.raises(ValueError, match="offset must be"):
        backend.pair_topk(torch.tensor([1, 2]), 0, -1, 3)
