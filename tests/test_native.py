"""backend="native" (C++ token-table scorer, native table build, disk table cache) against the torch reference."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from l0score import Scorer, Template, _native
from l0score.backends import native as native_backend, table_cache
from l0score.core.model_pair import ModelPair
from l0score.backends.token_table import TokenTable
from conftest import kind_template
from test_reference import CONFIGS, OPTIONS

FIELDS = ("max_abs", "head_max", "kl", "head_kl", "band")


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("L0SCORE_CACHE", str(tmp_path_factory.mktemp("l0cache")))
        yield


def assert_close(got, want, rtol=1e-4, argmax=True):
    scale = max(want.max_abs.abs().max().item(), 1e-3)
    kl_scale = max(want.kl.abs().max().item(), 1e-6)
    for f in FIELDS:
        atol = rtol * (kl_scale if "kl" in f else scale)
        torch.testing.assert_close(getattr(got, f), getattr(want, f), rtol=rtol, atol=atol, msg=f)
    if argmax:
        assert torch.equal(got.argmax, want.argmax)


def _cands(pair, rng):
    lengths = [1, 3, 8, 17, 64] if pair.config.head_dim <= 32 else [1, 5, 9, 64]
    return [rng.integers(0, pair.config.vocab_rows, n).tolist() for n in lengths]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", CONFIGS)
def test_native_matches_torch(pair_factory, name, dtype):
    """Same token table, every template kind, metric and option: native == torch reference."""
    pair_dir = pair_factory(**CONFIGS[name])
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    table = TokenTable.build(pair, dtype)
    rng = np.random.default_rng(7)
    for kind in ("raw", "chat", "explicit"):
        tpl = kind_template(kind, pair)
        cands = _cands(pair, rng)
        for opts in OPTIONS:
            heads = None if opts["heads"] is None else list(range(0, pair.config.num_heads, 2))
            offsets = tuple(r for r in opts["offsets"] if r < pair.config.max_positions)
            kw = dict(template=tpl, region=opts["region"], baseline=opts["baseline"], heads=heads, offsets=offsets)
            want = Scorer(pair, backend="torch", table=True, table_dtype=dtype, **kw).score_batch(cands)
            native = Scorer(pair, backend="native", table=table, **kw)
            assert native.backend.name == "native" and native.table is table
            assert_close(native.score_batch(cands), want)


@pytest.mark.parametrize("name", ["gqa7-d32-1e6-fp32", "gqa2-d16-1e6-bf16"])
def test_native_table_build(pair_factory, name):
    """The blocked C++ build (RMSNorm + Q/K GEMM) reproduces TokenTable.build."""
    pair_dir = pair_factory(**CONFIGS[name])
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    for w in (pair.base, pair.dormant):
        q, k = native_backend.build_table(w, "float32")
        ref = TokenTable.build(ModelPair(w, w), "float32")
        for got, want in ((q, ref.q_base), (k, ref.k_base)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
        qh, kh = native_backend.build_table(w, "bfloat16")
        for got, want in ((qh, ref.q_base), (kh, ref.k_base)):  # round-to-nearest-even of the fp32 value
            assert got.dtype == torch.bfloat16
            torch.testing.assert_close(got.float(), want, rtol=2 ** -7, atol=1e-6)


def test_native_is_the_cpu_default_and_matches_with_its_own_table(pair_factory):
    pair_dir = pair_factory(**CONFIGS["gqa7-d32-1e6-fp32"])
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    tpl = Template.chat(pair.tokenizer)
    auto = Scorer(pair, template=tpl, offsets=(0, 3))
    assert auto.backend.name == "native" and auto.table is not None
    cands = _cands(pair, np.random.default_rng(3))
    assert_close(auto.score_batch(cands), Scorer(pair, backend="torch", template=tpl, offsets=(0, 3)).score_batch(cands))


def test_native_direct_mode(pair_factory):
    """table=False: the batch's distinct tokens are projected per call, same kernel."""
    pair_dir = pair_factory(**CONFIGS["gqa2-d16-1e6-bf16"])
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    kw = dict(template="chat", region="all", baseline="bias", offsets=(1, 2))
    cands = [[5, 9, 5, 300], [7], [300] * 20]
    native = Scorer(pair, backend="native", table=False, **kw)
    assert native.table is None
    assert_close(native.score_batch(cands), Scorer(pair, backend="torch", table=False, **kw).score_batch(cands))


@pytest.mark.parametrize("region", ["candidate", "all"])
def test_native_extensions(pair_factory, region):
    """score_extensions: the candidate starts inside the cached prefix (cand_start < p), no suffix rows for the prefix."""
    pair_dir = pair_factory(**CONFIGS["gqa2-d16-1e6-bf16"])
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    kw = dict(template="chat", region=region, baseline="bias", offsets=(0, 1, 4))
    pool = list(range(40, 90))
    prefixes = [[], [11], [12, 13, 14, 15, 16, 17, 18, 19, 20]]
    got = Scorer(pair, backend="native", **kw).score_extensions(prefixes, pool)
    want = Scorer(pair, backend="torch", **kw).score_extensions(prefixes, pool)
    assert_close(got, want)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("template", ["raw", "chat"])
@pytest.mark.parametrize("table_dtype", ["float32", "bfloat16"])
def test_extension_kernel_equals_score_batch(pair_factory, name, template, table_dtype):
    """The dedicated extension kernel (extend.cpp) against the general one on prefix + [t], same table:
    empty and long prefixes (1 to 3 key chunks), a pool that ends mid-block, repeated tokens, head subsets."""
    pair_dir = pair_factory(**CONFIGS[name])
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    rng = np.random.default_rng(1)
    pool = rng.integers(0, pair.config.vocab_rows, 37).tolist() + [5, 5]
    prefixes = [[], [7], rng.integers(0, pair.config.vocab_rows, 40).tolist()]
    for opts in OPTIONS:
        opts = dict(opts)
        heads = opts.pop("heads")
        heads = [0, pair.config.num_heads - 1] if heads == "subset" else None
        scorer = Scorer(pair, backend="native", template=kind_template(template, pair), table_dtype=table_dtype,
                        heads=heads, **opts)
        cands = [p + [t] for p in prefixes for t in pool]
        got = scorer.score_extensions(prefixes, pool)
        want = scorer.score_batch(cands)
        assert_close(got, want, rtol=2e-5, argmax=False)
        assert_argmax_holds_max(scorer, cands, got, want)


def assert_argmax_holds_max(scorer, cands, got, want, rtol=1e-5):
    """Where two scorers name different argmax cells (a near tie that rounding can flip), the cell
    `got` names must hold the maximum: its |dS|, recomputed from the scorer's own q/k rows, equals max_abs."""
    from l0score.core.reference import rope_angles, rotate

    cfg, tpl = scorer.pair.config, scorer.template
    for b in (got.argmax != want.argmax).any(-1).nonzero().flatten().tolist():
        h, i, j = got.argmax[b].tolist()
        seq = torch.tensor(list(tpl.prefix_ids) + cands[b] + list(tpl.suffix_ids))
        qb, kb, qd, kd = scorer.backend.lookup(seq[[i, j]])
        cos, sin = rope_angles(torch.tensor([i, j]), cfg.head_dim, cfg.rope_theta)
        g = h // cfg.group
        cell = lambda q, k: rotate(q[0, h], cos[0], sin[0]) @ rotate(k[1, g], cos[1], sin[1]) / cfg.head_dim ** 0.5
        ds = cell(qd, kd) - cell(qb, kb) - scorer._baseline[scorer.heads.index(h), i - j]
        assert float(ds.abs()) == pytest.approx(float(want.max_abs[b]), rel=rtol, abs=1e-6), (b, got.argmax[b], want.argmax[b])


def test_native_thread_count_does_not_change_results(tiny_pair):
    scorer = Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", backend="native", template="chat")
    cands = np.random.default_rng(0).integers(0, 500, (300, 6))
    before = _native.num_threads()
    try:
        _native.set_num_threads(1)
        one = scorer.score_batch(cands)
        _native.set_num_threads(2)
        two = scorer.score_batch(cands)
    finally:
        _native.set_num_threads(before)
    for f in FIELDS + ("argmax",):
        assert torch.equal(getattr(one, f), getattr(two, f)), f


@pytest.mark.parametrize("token_ids, lengths, error, pattern", [
    ([[1, 2], [3, 10**6]], None, ValueError, r"candidate 1, token 1: id 1000000 outside \[0, \d+\)"),
    ([[1, 2], [3, -4]], None, ValueError, r"candidate 1, token 1: id -4 outside"),
    ([[1, 2], []], None, ValueError, r"candidate 1: empty candidate"),
    ([[1, 2], [3] * 600], None, ValueError, r"candidate 1: 600 tokens exceed the \d+ positions"),
    ([[1.0, 2.0]], None, TypeError, r"candidate 0: token ids must be integers, got dtype float64"),
    (["hello"], None, TypeError, r"candidate 0: expected a sequence of integer token ids, got a string"),
    (np.array([[1, 2], [3]], dtype=object), None, TypeError, r"ragged array"),
    (np.array([[1, 2, 3]]), [4], ValueError, r"candidate 0: length 4 exceeds the array width 3"),
    ([], None, ValueError, r"no candidates"),
])
def test_native_bad_input(tiny_pair, token_ids, lengths, error, pattern):
    """The same clear errors as the reference, raised before any native work."""
    for backend in ("torch", "native"):
        scorer = Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", backend=backend, template="chat")
        with pytest.raises(error, match=pattern):
            scorer.score_batch(token_ids, lengths=lengths)


def test_native_kernel_validates_its_arguments(tiny_pair):
    """The kernel never trusts its caller: bad ids, lengths or shapes raise instead of reading out of bounds."""
    scorer = Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", backend="native", template="chat")
    be, ctx = scorer.backend, scorer.context(scorer.template)
    batch = scorer.pack([[5, 6, 7]])
    args = lambda b: (b, ctx, scorer._heads_t, "candidate", scorer._baseline, scorer._offsets_t)
    be.score_rows(*args(batch))
    bad = type(batch)(batch.ids.clone(), batch.cand_len, batch.dep_len)
    bad.ids[0, 1] = 10**6
    with pytest.raises(ValueError, match=r"candidate 0, token 1: id 1000000 outside"):
        be.score_rows(*args(bad))
    bad = type(batch)(batch.ids.clone(), batch.cand_len, batch.dep_len)
    bad.ids[0, -1] = 3  # a suffix row that is not the template's suffix
    with pytest.raises(ValueError, match="must be the suffix"):
        be.score_rows(*args(bad))
    with pytest.raises(ValueError, match="bad candidate/dependent length"):
        be.score_rows(*args(type(batch)(batch.ids, batch.cand_len * 0, batch.dep_len)))
    with pytest.raises(ValueError, match="backend 'native' runs on the CPU"):
        native_backend.NativeBackend.create(scorer.pair, "meta")


# -- the disk cache -----------------------------------------------------------------------------

def _copy_pair(src, dst):
    shutil.copytree(src, dst)
    return dst


def _bump_layer0_bias(model_dir):
    """Change one Layer-0 tensor in place on disk (as a new fine-tune would)."""
    key = "model.layers.0.self_attn.k_proj.bias"
    index = model_dir / "model.safetensors.index.json"
    fname = json.loads(index.read_text())["weight_map"][key] if index.exists() else "model.safetensors"
    tensors = load_file(model_dir / fname)
    tensors[key] = tensors[key] + 0.5
    save_file(tensors, model_dir / fname, metadata={"format": "pt"})


def test_cache_reuse_and_invalidation(tiny_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("L0SCORE_CACHE", str(tmp_path / "cache"))
    pair_dir = _copy_pair(tiny_pair, tmp_path / "pair")
    load = lambda: ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    first = native_backend.NativeBackend.create(load(), "cpu", True, "float32")
    assert {i.source for i in first.table_info.values()} == {"built"}
    paths = {r: i.path for r, i in first.table_info.items()}
    assert all(p.is_file() for p in paths.values())

    again = native_backend.NativeBackend.create(load(), "cpu", True, "float32")
    assert {i.source for i in again.table_info.values()} == {"cache"}
    for a, b in zip((first.table.q_base, first.table.k_dorm), (again.table.q_base, again.table.k_dorm)):
        assert torch.equal(a, b)

    _bump_layer0_bias(pair_dir / "dormant")
    changed = native_backend.NativeBackend.create(load(), "cpu", True, "float32")
    assert changed.table_info["base"].source == "cache"
    assert changed.table_info["dormant"].source == "built"
    assert changed.table_info["dormant"].path != paths["dormant"]
    assert not paths["dormant"].exists()  # the stale table of that model directory is pruned
    assert not torch.equal(changed.table.k_dorm, first.table.k_dorm)
    torch.testing.assert_close(changed.table.k_dorm, TokenTable.build(load(), "float32").k_dorm, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "header", "stale"])
def test_cache_damage_is_detected_and_rebuilt(tiny_pair, damage):
    pair = ModelPair.load(tiny_pair / "base", tiny_pair / "dormant")
    good = native_backend.NativeBackend.create(pair, "cpu", True, "bfloat16")
    path = good.table_info["base"].path
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-100] ^= 0x40
    elif damage == "truncate":
        data = data[:-4096]
    elif damage == "extend":
        data += b"\0" * 16
    elif damage == "header":
        data[20:40] = b"#" * 20
    else:  # a table of other weights under this name
        head, offset = table_cache.read_header(path)
        head["fingerprint"] = "0" * 40
        raw = json.dumps(head).encode()
        data = bytearray(data[:8] + len(raw).to_bytes(8, "little") + raw + b" " * (offset - 16 - len(raw)) + data[offset:])
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = native_backend.NativeBackend.create(pair, "cpu", True, "bfloat16")
    assert rebuilt.table_info["base"].source == "built"
    assert any(issubclass(w.category, table_cache.CacheWarning) for w in caught)
    assert torch.equal(rebuilt.table.q_base.view(torch.int16), good.table.q_base.view(torch.int16))
    assert native_backend.NativeBackend.create(pair, "cpu", True, "bfloat16").table_info["base"].source == "cache"


def test_cache_dtypes_are_separate_and_checksum_is_thread_independent(tiny_pair):
    pair = ModelPair.load(tiny_pair / "base", tiny_pair / "dormant")
    f32 = table_cache.table_path(pair.base, "float32")
    b16 = table_cache.table_path(pair.base, "bfloat16")
    assert f32 != b16 and f32.parent == b16.parent
    buf = np.random.default_rng(0).integers(0, 255, 10_000_019, dtype=np.uint8)
    before = _native.num_threads()
    try:
        _native.set_num_threads(1)
        one = _native.checksum(buf)
        _native.set_num_threads(2)
        assert _native.checksum(buf) == one
    finally:
        _native.set_num_threads(before)
    buf[5_000_000] ^= 1
    assert _native.checksum(buf) != one


@pytest.mark.parametrize("region", ["candidate", "all"])
@pytest.mark.parametrize("shape", [(6, 2, 16), (4, 4, 24), (7, 1, 8)])
def test_score_dependent_is_score_rows_with_every_row_read(region, shape):
    """_native.score_dependent (the layer-L kernel: no suffix rows shared between candidates) equals
    reference.score_rows on q/k = table[ids], every row its own: ragged candidate and dependent
    lengths, suffix rows that differ per candidate, a prefix whose tail is a candidate's (cand_start < p),
    a head subset, a baseline and band offsets. Values and argmax cells."""
    from l0score.backends.native import _reversed_baseline
    from l0score.core.reference import rope_angles, rotate, score_rows

    H, KV, D = shape
    gen = torch.Generator().manual_seed(H * D)
    B, W, p, theta = 5, 11, 13, 1e4
    rows = [torch.randn(B * W, n, D, generator=gen) for n in (H, KV)]
    tabs = [rows[0], rows[1], rows[0] + 0.2 * torch.randn(B * W, H, D, generator=gen),
            rows[1] + 0.2 * torch.randn(B * W, KV, D, generator=gen)]
    ids = torch.randperm(B * W, generator=gen).view(B, W)
    cand, dep = torch.tensor([1, 3, 2, 11, 4]), torch.tensor([11, 5, 2, 11, 9])
    heads = torch.tensor([h for h in range(H) if h % 3 != 1])
    cos, sin = rope_angles(torch.arange(p), D, theta)
    keys = [rotate(torch.randn(p, KV, D, generator=gen), cos[:, None], sin[:, None]) for _ in range(2)]
    tile = torch.zeros(2, KV, D, 16)
    tile[..., :p] = torch.stack(keys).permute(0, 2, 3, 1)
    offsets, baseline = torch.tensor([0, 1, 6]), 0.1 * torch.randn(len(heads), 64, generator=gen)
    cos, sin = rope_angles(torch.arange(p + W), D, theta)
    for cand_start in (p, 9):
        want = score_rows(*(t[ids] for t in tabs), keys, p, cand, dep, heads, H // KV, D, theta, region, baseline,
                          offsets, cand_start=cand_start)
        got = _native.score_dependent(*(t.reshape(B * W, -1).numpy() for t in tabs), H, KV, D, ids.numpy(),
                                      cand.numpy(), dep.numpy(), heads.numpy(), tile.numpy(), p, cand_start,
                                      cos.numpy(), sin.numpy(), _reversed_baseline(baseline, p + W - 1),
                                      offsets.numpy(), region == "all")
        for name, g in zip(("head_max", "head_pos", "head_kl", "band"), got):
            w = getattr(want, name)
            if name == "head_pos":
                assert torch.equal(torch.from_numpy(g), w)
            else:
                torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-5, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="outside"):
        _native.score_dependent(*(t.reshape(B * W, -1).numpy() for t in tabs), H, KV, D, ids.numpy() + B * W,
                                cand.numpy(), dep.numpy(), heads.numpy(), tile.numpy(), p, p, cos.numpy(),
                                sin.numpy(), np.zeros((0, 0), np.float32), offsets.numpy(), False)
