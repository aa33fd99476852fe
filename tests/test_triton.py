"""backend="triton" under TRITON_INTERPRET=1 against the torch reference (and the kernels' own rules).

Shapes are small and odd on purpose: the interpreter runs every program serially in numpy.
fp32 tables must match the reference to 1e-4 relative; bf16 tables must stay inside the bound
documented in README.md ("GPU performance (estimated)") (checked per candidate from the actual q/k norms).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from l0score import Scorer, Template
from l0score.core.reference import bias_baseline, full_logits, project, rope_angles, rotate, score_rows
from conftest import kind_template

KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels" / "triton"
FIELDS = ("max_abs", "head_max", "kl", "head_kl", "band")
RTOL = 1e-4
BF16_U = 2.0 ** -8  # unit roundoff of a round-to-nearest-even bf16 entry (8-bit significand)



def _candidates(pair, seed, lengths=(1, 3, 9, 17)):
    rng = np.random.default_rng(seed)
    cands = [rng.integers(0, pair.config.vocab_rows, n).tolist() for n in lengths]
    return cands + [[5, 5, 5, 5]]  # repeated tokens: exact ties in the math


def _ds_at(pair, tpl, cand, h, i, j, baseline):
    """|dS - baseline| of one cell of the full sequence, from the reference's dense logits."""
    ids = torch.tensor(list(tpl.prefix_ids) + list(cand) + list(tpl.suffix_ids))
    ds = full_logits(pair.dormant, ids)[h, i, j] - full_logits(pair.base, ids)[h, i, j]
    if baseline == "bias":
        ds = ds - bias_baseline(pair.base, pair.dormant, torch.tensor([h]), i - j + 1)[0, i - j]
    return float(ds.abs())


def compare(got, want, rtol=RTOL, pair=None, tpl=None, cands=None, baseline="none"):
    """Assert every metric agrees (relative to each metric's scale); return the max relative errors."""
    errs = {}
    for f in FIELDS:
        a, b = getattr(got, f).double(), getattr(want, f).double()
        assert a.shape == b.shape, f
        if not b.numel():
            continue
        scale = b.abs().max().clamp(min=1e-6)
        err = ((a - b).abs() / torch.maximum(b.abs(), scale)).max().item()
        errs[f] = err
        assert err <= rtol, (f, err, a, b)
    for b_idx in np.flatnonzero((got.argmax != want.argmax).any(-1).numpy()):
        # only a near-tie may differ (identical (token, token, offset) triples at different positions)
        h, i, j = got.argmax[b_idx].tolist()
        assert pair is not None, "argmax differs"
        v = _ds_at(pair, tpl, cands[b_idx], h, i, j, baseline)
        np.testing.assert_allclose(v, want.max_abs[b_idx].item(), rtol=rtol)
    return errs


def _scorers(pair, **kw):
    return Scorer(pair, backend="triton", device="cpu", **kw), Scorer(pair, backend="torch", device="cpu", **kw)


CASES = [
    ("raw", "candidate", "none", None, (0, 1, 2, 7)),
    ("chat", "candidate", "bias", (0, 4, 5), (0, 1, 3)),
    ("chat", "all", "none", None, (1, 500)),
    ("explicit", "all", "bias", (2,), (0, 2, 40)),
    ("explicit", "candidate", "none", (1, 3), ()),
]


@pytest.mark.parametrize("template,region,baseline,heads,offsets", CASES)
def test_fp32_table_matches_reference(pair32, template, region, baseline, heads, offsets):
    tpl = kind_template(template, pair32, before="Note: ", after=" ok")
    tri, ref = _scorers(pair32, template=tpl, region=region, baseline=baseline, heads=heads, offsets=offsets)
    cands = _candidates(pair32, len(template) + len(region))
    got, want = tri.score_batch(cands), ref.score_batch(cands)
    errs = compare(got, want, pair=pair32, tpl=tpl, cands=cands, baseline=baseline)
    print(f"fp32 table {template}/{region}/{baseline}: max rel err {max(errs.values()):.2e}")


def test_long_rows_many_tiles(pair32):
    """Rows, prefix keys and dependent keys each span more than one tile (width > 64, prefix > 64)."""
    rng = np.random.default_rng(11)
    tpl = Template(rng.integers(0, 500, 70).tolist(), [3, 1, 4, 1, 5])
    cands = [rng.integers(0, 500, 66).tolist(), [8, 9]]
    for region in ("candidate", "all"):
        tri, ref = _scorers(pair32, template=tpl, region=region, baseline="bias", heads=(4,), offsets=(0, 1, 65, 130))
        compare(tri.score_batch(cands), ref.score_batch(cands), pair=pair32, tpl=tpl, cands=cands, baseline="bias")


@pytest.mark.parametrize("which", ["pair32", "pair16"])
def test_direct_path_matches_table_path(request, which):
    """The fused direct kernel (fp32 and bf16 checkpoint weights) against the table path and the reference."""
    pair = request.getfixturevalue(which)
    kw = dict(template="chat", region="all", baseline="bias", heads=(0, 2, 3), offsets=(0, 3))
    cands = _candidates(pair, 3, lengths=(2, 7, 4))
    table = Scorer(pair, backend="triton", device="cpu", table=True, **kw)
    direct = Scorer(pair, backend="triton", device="cpu", table=False, **kw)
    assert table.backend.packed is not None and direct.backend.table is None
    a, b = table.score_batch(cands), direct.score_batch(cands)
    compare(a, b, rtol=1e-5)
    compare(b, Scorer(pair, backend="torch", **kw).score_batch(cands), pair=pair, tpl=direct.template, cands=cands,
            baseline="bias")


def test_bf16_checkpoint_fp32_table(pair16):
    """bf16 weights in, fp32 accumulation: the fp32 table still matches the (fp32-upcast) reference."""
    tri, ref = _scorers(pair16, template="chat", region="candidate", baseline="bias", offsets=(0, 1, 2))
    cands = _candidates(pair16, 4)
    errs = compare(tri.score_batch(cands), ref.score_batch(cands), pair=pair16, tpl=tri.template, cands=cands,
                   baseline="bias")
    print(f"bf16 checkpoint, fp32 table: max rel err {max(errs.values()):.2e}")


def _bf16_bounds(pair, tpl, cands, heads):
    """Worst-case first-order bounds of a bf16 table's effect (README.md ("GPU performance (estimated)"), "Accuracy"), [B, Hs].

    A table entry is off by at most u|x|, so a logit S_m[i, j] by at most
    eps_m[i, j] = 2u |q_m,i| |k_m,j| / sqrt(D). Then |d head_max| <= max over cells of
    eps_b + eps_d, and per row |d KL_i| <= eps_b,i |p_d - p_b|_1 + eps_d,i E_pd|dS - E_pd dS|
    (eps_m,i: the row's largest eps_m[i, j]), summed over the dependent rows.
    """
    cfg = pair.config
    hs = list(heads)
    kv = [h // cfg.group for h in hs]
    out_max, out_kl = [], []
    for cand in cands:
        ids = torch.tensor(list(tpl.prefix_ids) + list(cand) + list(tpl.suffix_ids))
        T, p = len(ids), len(tpl.prefix_ids)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        eps, s = [], []
        for w in (pair.base, pair.dormant):
            q, k = project(w, ids)
            qn, kn = q.norm(dim=-1)[:, hs].T, k.norm(dim=-1)[:, kv].T  # [Hs, T]
            cell = 2 * BF16_U * qn[:, :, None] * kn[:, None, :] / cfg.head_dim ** 0.5
            eps.append(cell.masked_fill(~causal, 0))
            s.append(full_logits(w, ids)[hs].masked_fill(~causal, float("-inf")))
        out_max.append((eps[0] + eps[1]).flatten(1).amax(1))
        pb, pd = s[0].softmax(-1), s[1].softmax(-1)
        ds = (s[1] - s[0]).nan_to_num(0.0)
        spread = (pd * (ds - (pd * ds).sum(-1, keepdim=True)).abs()).sum(-1)  # [Hs, T]
        row = eps[0].amax(-1) * (pd - pb).abs().sum(-1) + eps[1].amax(-1) * spread
        out_kl.append(row[:, p:].sum(-1))
    return torch.stack(out_max), torch.stack(out_kl)


def test_bf16_table_within_documented_bound(pair16):
    tpl = kind_template("chat", pair16, before="Note: ", after=" ok")
    kw = dict(template=tpl, region="candidate", baseline="bias", offsets=(0, 1))
    tri = Scorer(pair16, backend="triton", device="cpu", table_dtype="bfloat16", **kw)
    assert tri.backend.table_dtype == "bfloat16" and tri.table.q_base.dtype == torch.bfloat16
    ref = Scorer(pair16, backend="torch", device="cpu", **kw)
    cands = _candidates(pair16, 9, lengths=(2, 6, 11))
    got, want = tri.score_batch(cands), ref.score_batch(cands)
    bound_max, bound_kl = _bf16_bounds(pair16, tpl, cands, tri.heads)
    d_max = (got.head_max - want.head_max).abs()
    d_kl = (got.head_kl - want.head_kl).abs()
    assert (d_max <= bound_max).all(), (d_max, bound_max)
    assert (d_kl <= bound_kl).all(), (d_kl, bound_kl)
    assert ((got.band - want.band).abs() <= bound_max.amax(1, keepdim=True)).all()
    rel = {f: ((getattr(got, f) - getattr(want, f)).abs().max() / getattr(want, f).abs().max()).item()
           for f in ("max_abs", "kl")}
    print(f"bf16 table: rel err {rel}; used {float((d_max / bound_max).max()):.2f} of the max bound, "
          f"{float((d_kl / bound_kl).max()):.2f} of the KL bound")


def test_token_table_build_matches_reference_projection(pair32, pair16):
    for pair in (pair32, pair16):
        cfg = pair.config
        hd = cfg.num_heads * cfg.head_dim
        t32 = Scorer(pair, backend="triton", device="cpu").backend.packed
        t16 = Scorer(pair, backend="triton", device="cpu", table_dtype="bfloat16").backend.packed
        ids = torch.arange(cfg.vocab_rows)
        for m, w in enumerate((pair.base, pair.dormant)):
            q, k = project(w, ids)
            want = torch.cat((q.flatten(1), k.flatten(1)), 1)
            got = t32[:, m]
            scale = want.abs().amax(1, keepdim=True)
            assert ((got - want).abs() / scale).max() < 1e-5
            # bf16 table: round-to-nearest-even of the fp32 values (also under the interpreter)
            assert (t16[:, m].float() - want).abs().le(BF16_U * want.abs() * (1 + 1e-3) + 1e-6 * scale).all()
            assert torch.equal(t16[:, m], got.to(torch.bfloat16))
            assert got.shape[1] == hd + cfg.num_kv_heads * cfg.head_dim


def test_token_table_weight_dtypes_and_subsets():
    from l0score.kernels.token_table import token_table

    gen = torch.Generator().manual_seed(0)
    vocab, hidden, n_out = 37, 48, 5 * 16
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        embed = torch.randn(vocab, hidden, generator=gen).to(dt)
        norm = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dt)
        w = torch.randn(n_out, hidden, generator=gen).to(dt)
        b = torch.randn(n_out, generator=gen).to(dt)
        x = embed.float()
        want = (norm.float() * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)) @ w.float().T + b.float()
        full = token_table(embed, norm, w, b, 1e-6)
        assert ((full - want).abs().max() / want.abs().max()) < 1e-5
        ids = torch.tensor([36, 0, 5, 5], dtype=torch.int32)
        torch.testing.assert_close(token_table(embed, norm, w, b, 1e-6, ids=ids), full[ids.long()], rtol=0, atol=0)
        out16 = token_table(embed, norm, w, b, 1e-6, ids=ids, out_dtype=torch.bfloat16)
        assert torch.equal(out16, full[ids.long()].to(torch.bfloat16))


def test_lookup_and_prefix_keys(pair32):
    ids = torch.tensor([[3, 500, 7], [0, 0, 575]])
    for table in (True, False):
        backend = Scorer(pair32, backend="triton", device="cpu", table=table).backend
        got = backend.lookup(ids)
        want = (*project(pair32.base, ids), *project(pair32.dormant, ids))
        for g, w in zip(got, want):
            assert g.dtype == torch.float32 and g.shape == w.shape
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_score_extensions(pair32):
    """Incremental extension (cached candidate tokens inside the prefix, cand_start < p)."""
    kw = dict(template="chat", region="candidate", baseline="bias", heads=(1, 4), offsets=(1, 2))
    tri, ref = _scorers(pair32, **kw)
    prefixes, pool = [[], [12, 40]], [3, 77, 12]
    compare(tri.score_extensions(prefixes, pool), ref.score_extensions(prefixes, pool))


def _kernel_inputs(V=53, H=4, KV=2, D=8, p=9, B=4, seed=0, table_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    qb, kb = torch.randn(V, H, D, generator=gen), torch.randn(V, KV, D, generator=gen)
    qd, kd = qb + 0.3 * torch.randn(V, H, D, generator=gen), kb + 0.3 * torch.randn(V, KV, D, generator=gen)
    tabs = [torch.cat((q.flatten(1), k.flatten(1)), 1).to(table_dtype) for q, k in ((qb, kb), (qd, kd))]
    (qb, kb), (qd, kd) = [(t.float()[:, : H * D].reshape(V, H, D), t.float()[:, H * D:].reshape(V, KV, D)) for t in tabs]
    cand = torch.randint(1, 8, (B,), generator=gen)
    dep = cand + 3
    ids = torch.randint(0, V, (B, int(dep.max())), generator=gen)
    pre = torch.randint(0, V, (p,), generator=gen)
    cos, sin = rope_angles(torch.arange(64), D, 1e4)
    pk = (rotate(kb[pre], cos[:p, None], sin[:p, None]), rotate(kd[pre], cos[:p, None], sin[:p, None]))
    return dict(tabs=tabs, q=(qb, kb, qd, kd), ids=ids, cand=cand, dep=dep, pk=pk, cos=cos, sin=sin, H=H, KV=KV, D=D, p=p)


@pytest.mark.parametrize("D,table_dtype", [(8, torch.float32), (24, torch.bfloat16), (32, torch.bfloat16)])
def test_score_kernel_head_dims_and_bf16_loads(D, table_dtype):
    """Kernel level: head_dim 8 (halves padded to 16), 24 (not a power of two), bf16 tables read
    exactly (the reference gets the same bf16 values, upcast)."""
    from l0score.kernels.score import score_table

    x = _kernel_inputs(D=D, table_dtype=table_dtype)
    heads = torch.tensor([0, 3], dtype=torch.int32)
    base = 0.1 * torch.randn(2, 64)
    offs = torch.tensor([0, 2, 5])
    for region in ("candidate", "all"):
        got = score_table(*x["tabs"], x["ids"], x["cand"], x["dep"], x["pk"], heads, x["cos"], x["sin"], base, offs,
                          n_heads=x["H"], n_kv_heads=x["KV"], head_dim=D, region=region)
        want = score_rows(*(t[x["ids"]] for t in x["q"]), x["pk"], x["p"], x["cand"], x["dep"], heads.long(),
                          x["H"] // x["KV"], D, 1e4, region, base, offs)
        for f, w in (("head_max", want.head_max), ("head_kl", want.head_kl)):
            torch.testing.assert_close(getattr(got, f), w, rtol=RTOL, atol=RTOL * float(w.abs().max()))
        torch.testing.assert_close(got.band.amax(1), want.band, rtol=RTOL, atol=RTOL * float(want.band.abs().max()))
        assert torch.equal(got.head_pos, want.head_pos)


def test_launchers_validate_inputs():
    from l0score.kernels.score import score_table
    from l0score.kernels.token_table import token_table

    x = _kernel_inputs()
    heads = torch.tensor([0, 1], dtype=torch.int32)
    offs = torch.tensor([0])
    kw = dict(n_heads=4, n_kv_heads=2, head_dim=8)
    args = lambda **o: dict(dict(table_b=x["tabs"][0], table_d=x["tabs"][1], ids=x["ids"], cand_len=x["cand"],
                                 dep_len=x["dep"], prefix_keys=x["pk"], heads=heads, rope_cos=x["cos"],
                                 rope_sin=x["sin"], baseline=None, offsets=offs), **o)
    bad_ids = x["ids"].clone()
    bad_ids[1, 0] = 53
    with pytest.raises(ValueError, match="outside"):
        score_table(**args(ids=bad_ids), **kw)
    with pytest.raises(TypeError, match="dtype"):
        score_table(**args(table_b=x["tabs"][0].half(), table_d=x["tabs"][1].half()), **kw)
    with pytest.raises(TypeError, match="dtype"):
        score_table(**args(ids=x["ids"].float()), **kw)
    with pytest.raises(ValueError, match=r"\(H \+ KV\) \* D"):
        score_table(**args(), n_heads=4, n_kv_heads=2, head_dim=16)
    with pytest.raises(ValueError, match="cand_len"):
        score_table(**args(cand_len=x["cand"][:2]), **kw)
    with pytest.raises(ValueError, match="dep_len"):
        score_table(**args(cand_len=x["dep"] + 1), **kw)
    with pytest.raises(ValueError, match="RoPE table"):
        score_table(**args(rope_cos=x["cos"][:5].contiguous(), rope_sin=x["sin"][:5].contiguous()), **kw)
    with pytest.raises(TypeError, match="heads"):
        score_table(**args(heads=heads.long()), **kw)
    with pytest.raises(ValueError, match="region"):
        score_table(**args(), region="every", **kw)
    embed, w = torch.randn(10, 48), torch.randn(32, 48)
    with pytest.raises(ValueError, match="outside"):
        token_table(embed, torch.ones(48), w, torch.zeros(32), 1e-6, ids=torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="shape mismatch"):
        token_table(embed, torch.ones(47), w, torch.zeros(32), 1e-6)
    with pytest.raises(TypeError, match="dtype"):
        token_table(embed.double(), torch.ones(48), w, torch.zeros(32), 1e-6)


def test_cpu_without_interpreter_is_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("from l0score.backends.triton import TritonBackend\n"
            "try:\n    TritonBackend.create(None, 'cpu')\nexcept RuntimeError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ERR" in out.stdout and "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr


def test_kernels_respect_cpu_interpreter_traps():
    """docs/architecture.md#triton-kernels-without-a-gpu: IEEE dots, no libdevice/inline asm/block pointers/device_assert, tiles >= 16, one
    config when interpreting, upcast right after every table/weight load."""
    from l0score.kernels import direct, score, token_table
    from l0score.kernels._launch import interpreting

    for path in KERNEL_DIR.glob("*.py"):
        src = re.sub(r'"""(?:.|\n)*?"""', "", path.read_text())  # docstrings may name what is avoided
        code = "\n".join(line.split("#")[0] for line in src.splitlines())
        for banned in ("libdevice", "inline_asm", "make_block_ptr", "tl.advance", "device_assert",
                       "driver.active", "do_bench"):
            assert banned not in code, (path.name, banned)
        for call in re.findall(r"tl\.dot\(([^()]*(?:\([^()]*\)[^()]*)*)\)", code):
            assert "input_precision=" in call, (path.name, call)
    for mod in (token_table, score, direct):
        launch = mod._launch
        assert interpreting(launch.kernel) and launch._target is None  # no autotune without a GPU
        for cfg in launch.gpu_configs + [launch.interp_config]:
            assert all(v >= 16 for k, v in cfg.kwargs.items() if k.startswith("BLOCK")), cfg
    assert score.row_block(1) == 16 and score.row_block(70) == 64
    # loads from tables / weights / embeddings are upcast on the spot
    for path in ("score.py", "direct.py", "token_table.py"):
        src = (KERNEL_DIR / path).read_text()
        for line in src.splitlines():
            if "tl.load(" in line and re.search(r"\b(tab_\w+|emb_\w+|embed_ptr|w_ptr|w_[bd]_ptr|x_rows|w_rows|norm_\w+)\b", line):
                assert ".to(tl.float32)" in line, (path, line.strip())


def test_kernels_compile_for_h100_without_spills():
    """What the interpreter cannot check (layouts, tile rules, types of loop-carried values, register
    limits): compile each kernel for sm_90 through Triton's NVIDIA toolchain, which needs no driver,
    with Qwen2-7B shapes and its first H100 config, and require zero register spills."""
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("this triton build ships no NVIDIA toolchain")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, "-m", "l0score.kernels.aot_check"], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("sm_90 ")]
    assert len(lines) == 4, out.stdout
    for ln in lines:
        print(ln)
        assert "spill_stack=0 " in ln, ln
