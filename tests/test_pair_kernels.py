"""The pair-scan kernels (native kernels/cpu/pair_scan.cpp, Triton kernels/triton/pair_scan.py under
TRITON_INTERPRET=1) against the torch pair scan.

`pair_scan(scorer, ...)` on backend="native" or "triton" dispatches each (head, offset) to the
backend's kernel; it must return the triples of pairs.py's torch code on the same table values,
with values within rtol 1e-5. Triples are compared rank by rank wherever the reference's
neighbouring |values| are more than 2e-5 apart (ties-free); the sorted |values| are compared at
every rank. Pools are small and odd (the interpreter runs each program serially; the native kernel's
last panel of 16 tokens is partial); kernel-level tests check top > pool, duplicate tokens (exact
ties), a head_dim needing two column slices, and argument errors.
"""
import numpy as np
import pytest
import torch

from l0score import Scorer
from l0score.core.reference import rope_angles, rotate
from l0score.search import pair_scan

RTOL = 1e-5
TIE_GAP = 2e-5  # neighbouring reference values closer than this (relative) may swap order
OFFSETS = (0, 1, 2, 5)



def _pool(pair, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(pair.config.vocab_rows, generator=g)[:n]


def _key(row):
    return row["query_token"], row["key_token"], row["offset"], row["head"]


def assert_same_rows(got, want):
    """Same length, |values| within RTOL at every rank, same triple and signed value at ties-free ranks."""
    assert len(got) == len(want)
    if not want:
        return 0.0
    ga, wa = np.array([r["abs"] for r in got]), np.array([r["abs"] for r in want])
    np.testing.assert_allclose(ga, wa, rtol=RTOL)
    rel = np.abs(np.diff(wa)) / wa[:-1]
    tie = np.zeros(len(wa), bool)
    tie[:-1] |= rel < TIE_GAP
    tie[1:] |= rel < TIE_GAP
    for g, w, t in zip(got, want, tie):
        if not t:
            assert _key(g) == _key(w), (g, w)
            assert g["value"] == pytest.approx(w["value"], rel=RTOL)
    assert tie.mean() < 0.2, "reference too tie-heavy for this check"
    return float(np.max(np.abs(ga - wa) / wa))


def assert_same_scan(got, want):
    err = assert_same_rows(got["top"], want["top"])
    assert got["complete"] and want["complete"]
    assert sorted(got["per_head"]) == sorted(want["per_head"])
    for h in want["per_head"]:
        err = max(err, assert_same_rows(got["per_head"][h], want["per_head"][h]))
    return err


def _count_calls(scorer):
    calls = []
    inner = scorer.backend.pair_topk

    def hook(*args):
        calls.append(args[1:3])
        return inner(*args)

    scorer.backend.pair_topk = hook
    return calls


BACKENDS = ["native", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("baseline, n_pool, top, heads", [
    ("none", 131, 40, None),
    ("bias", 97, 1, [1, 5]),
    ("bias", 53, 17, [0, 3, 4]),
])
def test_pair_scan_kernel_equals_torch(pair32, backend, baseline, n_pool, top, heads):
    pool = _pool(pair32, n_pool, seed=n_pool)
    want = pair_scan(Scorer(pair32, backend="torch", template="raw", heads=heads, baseline=baseline), pool,
                     offsets=OFFSETS, top=top, progress=False)
    scorer = Scorer(pair32, backend=backend, template="raw", heads=heads, baseline=baseline)
    calls = _count_calls(scorer)
    got = pair_scan(scorer, pool, offsets=OFFSETS, top=top, progress=False)
    assert len(calls) == len(scorer.heads) * len(OFFSETS)  # every (head, offset) went to the kernel
    err = assert_same_scan(got, want)
    print(f"\n{backend} pair scan fp32 table, baseline {baseline}, pool {n_pool}, top {top}: max rel err {err:.2e}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pair_scan_bf16_table(pair16, backend):
    """bf16 table (bf16 checkpoint, head_dim 32): the kernel against the torch path on the same table."""
    pool = _pool(pair16, 71, seed=3)
    scorer = Scorer(pair16, backend=backend, template="raw", baseline="bias", table_dtype="bfloat16")
    assert scorer.backend.table_dtype == "bfloat16"
    got = pair_scan(scorer, pool, offsets=OFFSETS, top=23, progress=False)
    want = pair_scan(scorer, pool, offsets=OFFSETS, top=23, progress=False, use_kernel=False)
    err = assert_same_scan(got, want)
    print(f"\n{backend} pair scan bf16 table: max rel err {err:.2e}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pair_scan_direct_path(pair32, backend):
    """No table: the backend projects the pool's rows of each head once and scans them."""
    pool = _pool(pair32, 61, seed=7)
    scorer = Scorer(pair32, backend=backend, template="raw", heads=[2, 3], table=False)
    assert scorer.table is None
    got = pair_scan(scorer, pool, offsets=(0, 5), top=13, progress=False)
    want = pair_scan(Scorer(pair32, backend="torch", template="raw", heads=[2, 3], table=False), pool,
                     offsets=(0, 5), top=13, progress=False)
    assert_same_scan(got, want)


def test_pair_scan_checkpoint_resume(pair32, tmp_path):
    """An interrupted triton scan resumes from its checkpoint and scans only the remaining heads."""
    pool = _pool(pair32, 41, seed=11)
    ckpt = tmp_path / "pairs.json"
    full = pair_scan(Scorer(pair32, backend="triton", template="raw"), pool, offsets=(1, 2), top=9, progress=False)

    scorer = Scorer(pair32, backend="triton", template="raw")
    inner = scorer.backend.pair_topk
    seen = []

    def dies_on_head_3(pool, head, *rest):
        if head == 3:
            raise KeyboardInterrupt
        seen.append(head)
        return inner(pool, head, *rest)

    scorer.backend.pair_topk = dies_on_head_3
    with pytest.raises(KeyboardInterrupt):
        pair_scan(scorer, pool, offsets=(1, 2), top=9, progress=False, checkpoint=ckpt)
    assert ckpt.exists() and sorted(set(seen)) == [0, 1, 2]

    scorer.backend.pair_topk = inner
    calls = _count_calls(scorer)
    resumed = pair_scan(scorer, pool, offsets=(1, 2), top=9, progress=False, checkpoint=ckpt, resume=True)
    assert sorted({h for h, _ in calls}) == [3, 4, 5]
    assert not ckpt.exists()
    assert_same_scan(resumed, full)


# -- launcher level -------------------------------------------------------------------------------

def _random_case(n_vocab=200, heads=3, kv=1, d=20, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    packed = torch.randn(n_vocab, 2, (heads + kv) * d, generator=g).to(dtype)
    cos, sin = rope_angles(torch.arange(40), d, 1e4)
    return packed, cos.contiguous(), sin.contiguous()


def _dense(packed, pool, h, g, heads, d, offset, cos, sin, shift):
    """All cells of one (head, offset) as a dense [N, N] matrix (offset 0: diagonal only), torch."""
    rows = packed[pool].float()
    qb, qd = rows[:, 0, h * d:(h + 1) * d], rows[:, 1, h * d:(h + 1) * d]
    kb, kd = rows[:, 0, (heads + g) * d:(heads + g + 1) * d], rows[:, 1, (heads + g) * d:(heads + g + 1) * d]
    c, s = cos[offset:offset + 1], sin[offset:offset + 1]
    v = (rotate(qd, c, s) @ kd.T - rotate(qb, c, s) @ kb.T) * d ** -0.5 - shift
    if offset == 0:
        v = torch.where(torch.eye(len(pool), dtype=torch.bool), v, torch.nan)
    return v


def _check_against_dense(out, dense, top):
    """Returned cells are distinct, carry their dense value, and their |values| are the dense top."""
    flat = dense.flatten()
    flat = flat[~flat.isnan()]
    k = min(top, flat.numel())
    want = torch.sort(flat.abs(), descending=True).values[:k]
    assert out.values.shape == (k,)
    atol = 0.1 * RTOL * float(want[0])  # cells near zero are differences of O(max) dot products
    torch.testing.assert_close(out.values.abs(), want, rtol=RTOL, atol=atol)
    torch.testing.assert_close(out.values, dense[out.query_index, out.key_index], rtol=RTOL, atol=atol)
    cells = set(zip(out.query_index.tolist(), out.key_index.tolist()))
    assert len(cells) == k


@pytest.mark.parametrize("n, top, keys_per_split, offset, d, dtype", [
    (37, 100, 10, 3, 20, torch.float32),      # 4 splits of 10 keys (not a multiple of the key tile)
    (37, 2000, 4096, 1, 20, torch.float32),   # top > N^2: every cell; one split per key
    (29, 50, 4096, 0, 20, torch.float32),     # offset 0 with top > N: the whole diagonal
    (70, 30, 4096, 7, 40, torch.bfloat16),    # bf16 table, head_dim 40: two column slices of 16
])
def test_launcher_against_dense(n, top, keys_per_split, offset, d, dtype):
    from l0score.kernels.pair_scan import pair_topk

    packed, cos, sin = _random_case(d=d, dtype=dtype)
    pool = torch.randperm(packed.shape[0], generator=torch.Generator().manual_seed(n))[:n]
    out = pair_topk(packed[:, 0], packed[:, 1], pool, cos, sin, q_col=2 * d, k_col=3 * d, head_dim=d,
                    offset=offset, top=top, shift=0.25, keys_per_split=keys_per_split)
    _check_against_dense(out, _dense(packed, pool, 2, 0, 3, d, offset, cos, sin, 0.25), top)


def test_launcher_exact_ties():
    """Duplicate pool tokens give exactly tied cells: any tied cell may be returned, never a wrong one,
    and the order is |value| descending, then query index, then key index."""
    from l0score.kernels.pair_scan import pair_topk

    packed, cos, sin = _random_case(seed=2)
    pool = torch.tensor([5, 9, 5, 17, 9, 5, 33, 17, 2, 9, 41])
    out = pair_topk(packed[:, 0], packed[:, 1], pool, cos, sin, q_col=0, k_col=60, head_dim=20, offset=2, top=12)
    dense = _dense(packed, pool, 0, 0, 3, 20, 2, cos, sin, 0.0)
    _check_against_dense(out, dense, 12)
    a, q, k = out.values.abs().tolist(), out.query_index.tolist(), out.key_index.tolist()
    assert all((-a[i], q[i], k[i]) <= (-a[i + 1], q[i + 1], k[i + 1]) for i in range(len(a) - 1) if a[i] == a[i + 1])


def _launch_args(**change):
    packed, cos, sin = _random_case()
    args = dict(table_b=packed[:, 0], table_d=packed[:, 1], ids=torch.arange(30), rope_cos=cos, rope_sin=sin,
                q_col=0, k_col=60, head_dim=20, offset=1, top=5)
    args.update(change)
    return args


@pytest.mark.parametrize("change, error, match", [
    (dict(table_b=torch.zeros(200, 80, dtype=torch.float16)), TypeError, "table_b must have dtype"),
    (dict(table_d=torch.zeros(199, 80)), ValueError, "same shape, strides and dtype"),
    (dict(table_b=torch.zeros(200, 80).T.contiguous().T), ValueError, "contiguous in its last dimension"),
    (dict(ids=torch.arange(30).reshape(5, 6)), ValueError, "ids must be 1-D"),
    (dict(ids=torch.arange(30.0)), TypeError, "ids must have dtype"),
    (dict(ids=torch.tensor([3, 200])), ValueError, "outside \\[0, 200\\)"),
    (dict(ids=torch.tensor([-1, 4])), ValueError, "holds id -1"),
    (dict(head_dim=19), ValueError, "head_dim must be positive and even"),
    (dict(k_col=61), ValueError, "k_col=61"),
    (dict(q_col=-1), ValueError, "q_col=-1"),
    (dict(rope_cos=torch.zeros(40, 9)), ValueError, "rope_cos must be contiguous \\[positions, 10\\]"),
    (dict(rope_sin=torch.zeros(40, 10, dtype=torch.float64)), TypeError, "rope_sin must have dtype"),
    (dict(offset=40), ValueError, "offset 40 outside"),
    (dict(offset=-1), ValueError, "offset -1 outside"),
    (dict(top=0), ValueError, "top must be positive"),
    (dict(dot_precision="fp16"), ValueError, "dot_precision"),
    (dict(keys_per_split=0), ValueError, "keys_per_split must be positive"),
])
def test_launcher_validation(change, error, match):
    from l0score.kernels.pair_scan import pair_topk

    with pytest.raises(error, match=match):
        pair_topk(**_launch_args(**change))


def test_launcher_empty_pool():
    from l0score.kernels.pair_scan import pair_topk

    out = pair_topk(**_launch_args(ids=torch.zeros(0, dtype=torch.int64)))
    assert out.values.shape == out.query_index.shape == out.key_index.shape == (0,)


def test_backend_hook_rejects_bad_pool(pair32):
    scorer = Scorer(pair32, backend="triton", template="raw", heads=[0])
    with pytest.raises(ValueError, match="pool token ids must be in"):
        scorer.backend.pair_topk(torch.tensor([1, pair32.config.vocab_rows]), 0, 1, 5, 0.0)
    with pytest.raises(ValueError, match="head 6 outside"):
        scorer.backend.pair_topk(torch.tensor([1, 2]), 6, 1, 5, 0.0)


@pytest.mark.parametrize("n, top, offset", [(37, 2000, 3), (29, 50, 0), (40, 7, 2)])
def test_native_kernel_against_dense(pair32, n, top, offset):
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


def test_native_kernel_bad_arguments(pair32):
    backend = Scorer(pair32, backend="native", template="raw").backend
    with pytest.raises(ValueError, match="pool token ids"):
        backend.pair_topk(torch.tensor([1, 10**7]), 0, 1, 5)
    with pytest.raises(ValueError, match="head 99"):
        backend.pair_topk(torch.tensor([1, 2]), 99, 1, 5)
    with pytest.raises(ValueError, match="top must be"):
        backend.pair_topk(torch.tensor([1, 2]), 0, 1, 0)
    with pytest.raises(ValueError, match="offset must be"):
        backend.pair_topk(torch.tensor([1, 2]), 0, -1, 3)
