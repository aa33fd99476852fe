"""Weight-diff analysis: planted heads and tokens recovered, spectra exact against torch, every tensor
shape handled, mismatched checkpoints rejected with a clear error, CLI and seed loader."""
import importlib
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import trigger_of
from l0score import CheckpointError
an = importlib.import_module("l0score.analysis.weight_diff")  # the module; `l0score.analysis.weight_diff` is the function
from l0score.analysis.weight_diff import analyze, load_seed_tokens
from l0score.core.checkpoint import list_tensors
from l0score.core.model_pair import ModelPair
from l0score.core.reference import bias_baseline

PLANTED = [
    {},  # the shared tiny pair: 2 KV heads, trigger of 3 tokens
    {"seed": 3, "trigger_length": 4, "num_key_value_heads": 1},  # 3 pairs sharing one kv head
    {"seed": 5, "dtype": "bfloat16"},
]


@pytest.fixture(scope="module")
def analysed(pair_factory, tmp_path_factory):
    """analyze() of each planted pair, run once per module."""
    cache = {}

    def run(i):
        if i not in cache:
            kw = dict(PLANTED[i])
            pair_dir = pair_factory(seed=kw.pop("seed", 0), **kw)
            out = tmp_path_factory.mktemp(f"analysis{i}")
            cache[i] = (pair_dir, out, analyze(pair_dir / "base", pair_dir / "dormant", out, progress=False))
        return cache[i]

    return run


@pytest.mark.parametrize("i", range(len(PLANTED)))
def test_planted_heads_rank_first_and_planted_tokens_lead_the_seeds(analysed, i):
    pair_dir, _, res = analysed(i)
    truth = trigger_of(pair_dir)
    planted_heads = {p["head"] for p in truth["pairs"]}
    assert set(res["focus_heads"]) == planted_heads
    assert {r["head"] for r in res["layer0"]["heads"][: len(planted_heads)]} == planted_heads
    trigger = truth["trigger_ids"]
    assert set(trigger) <= set(res["seed_tokens"][: len(trigger)])
    assert all(type(v) is int for v in res["focus_heads"] + res["seed_tokens"])


def test_outputs_and_contents(analysed):
    pair_dir, out, res = analysed(0)
    for name in ("analysis.json", "summary.md", "delta_norms.png", "head_spectra.png", "bias_template.png"):
        assert (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "analysis.json").read_text())
    assert on_disk["focus_heads"] == res["focus_heads"] and on_disk["seed_tokens"] == res["seed_tokens"]
    assert load_seed_tokens(out / "analysis.json") == res["seed_tokens"] == load_seed_tokens(out)
    summary = (out / "summary.md").read_text()
    assert "Focus heads" in summary and "bias_template.png" in summary

    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    cfg = pair.config
    bt = res["layer0"]["bias_template"]
    expected = bias_baseline(pair.base, pair.dormant, torch.arange(cfg.num_heads), bt["n_offsets"])
    torch.testing.assert_close(torch.tensor(bt["values"]), expected, rtol=1e-4, atol=1e-6)
    assert len(res["layer0"]["heads"]) == cfg.num_heads and len(res["layer0"]["kv_heads"]) == cfg.num_kv_heads

    # Every tensor reported, with norms and spectra matching a direct torch computation.
    base = {k: v for f in sorted((pair_dir / "base").glob("*.safetensors")) for k, v in load_file(f).items()}
    dorm = {k: v for f in sorted((pair_dir / "dormant").glob("*.safetensors")) for k, v in load_file(f).items()}
    assert {t["name"] for t in res["tensors"]} == set(base)
    for t in res["tensors"]:
        delta = dorm[t["name"]].double() - base[t["name"]].double()
        assert t["delta_norm"] == pytest.approx(float(delta.norm()), rel=1e-6)
        assert t["rel_norm"] == pytest.approx(float(delta.norm() / base[t["name"]].double().norm()), rel=1e-6)
        if delta.dim() == 1:
            assert t["svd"] is None
            continue
        s = torch.linalg.svdvals(delta)
        ref = an.spectrum_stats(s, float(delta.pow(2).sum()), min(delta.shape), True)
        for key in ("sigma1", "top16_energy", "effective_rank"):
            assert t["svd"][key] == pytest.approx(ref[key], rel=1e-6), (t["name"], key)
        assert t["svd"]["rank90"] == ref["rank90"]

    # Embedding rows: the largest row deltas, real tokens only.
    emb = res["layer0"]["embedding_changes"]
    row = (dorm["model.embed_tokens.weight"].double() - base["model.embed_tokens.weight"].double()).norm(dim=1)
    assert emb[0]["id"] == int(row[: pair.n_tokens].argmax())
    assert all(e["id"] < pair.n_tokens for e in emb)


def test_seed_tokens_never_special_or_padding(pair_factory, tmp_path):
    pair_dir = pair_factory()
    pair = ModelPair.load(pair_dir / "base", pair_dir / "dormant")
    res = analyze(pair_dir / "base", pair_dir / "dormant", tmp_path, top_tokens=10**6, plots=False, progress=False)
    seeds = res["seed_tokens"]
    assert len(seeds) == len(set(seeds)) == pair.n_tokens - len(pair.special_ids)
    assert not set(seeds) & pair.special_ids and max(seeds) < pair.n_tokens


def test_spectrum_stats_known_values():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    st = an.spectrum_stats(s, 14.0, 4, True)
    assert st["sigma1"] == 3.0 and st["top16_energy"] == pytest.approx(1.0)
    assert st["rank90"] == 2  # 9/14 < 0.9 <= 13/14
    p = torch.tensor([3.0, 2.0, 1.0]) / 6
    assert st["effective_rank"] == pytest.approx(math.exp(float(-(p * p.log()).sum())))
    flat = an.spectrum_stats(torch.ones(20), 20.0, 20, True)
    assert flat["top16_energy"] == pytest.approx(0.8) and flat["rank90"] == 18
    assert flat["effective_rank"] == pytest.approx(20.0)
    # Randomized: 2 leading values known, the rest of the energy as a flat tail.
    est = an.spectrum_stats(torch.tensor([2.0, 1.0]), 5.0 + 18 * 0.25, 20, False)
    assert est["exact"] is False and est["tail_energy"] == pytest.approx(4.5 / 9.5)
    full = an.spectrum_stats(torch.tensor([2.0, 1.0] + [0.5] * 18), 9.5, 20, True)
    for key in ("top16_energy", "rank90", "effective_rank"):
        assert est[key] == pytest.approx(full[key])
    zero = an.spectrum_stats(torch.zeros(3), 0.0, 3, True)
    assert zero["sigma1"] == 0.0 and zero["top16_energy"] == 0.0


def _write_checkpoint(directory, tensors):
    directory.mkdir(parents=True)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_square_1d_and_scalar_tensors_every_method(tmp_path, monkeypatch, dtype):
    g = torch.Generator().manual_seed(0)

    def low_rank(m, n):
        decay = 0.7 ** torch.arange(20, dtype=torch.float32)
        return (torch.randn(m, 20, generator=g) * decay) @ torch.randn(20, n, generator=g) + 1e-3 * torch.randn(m, n, generator=g)

    base = {"tall": torch.randn(700, 200, generator=g), "wide": torch.randn(150, 520, generator=g),
            "vec": torch.randn(37, generator=g), "scalar": torch.tensor(1.5), "cube": torch.randn(4, 5, 6, generator=g)}
    delta = {"tall": low_rank(700, 200), "wide": low_rank(150, 520), "vec": torch.randn(37, generator=g),
             "scalar": torch.tensor(0.25), "cube": torch.randn(4, 5, 6, generator=g)}
    b = {k: v.to(dtype) for k, v in base.items()}
    d = {k: (base[k] + delta[k]).to(dtype) for k in base}
    _write_checkpoint(tmp_path / "b", b)
    _write_checkpoint(tmp_path / "d", d)
    eb, ed = list_tensors(tmp_path / "b"), list_tensors(tmp_path / "d")
    assert eb["tall"].shape == (700, 200) and eb["scalar"].shape == ()

    for name in base:
        exact = d[name].double() - b[name].double()
        rec = an._tensor_stats(name, eb[name], ed[name], "auto", None)
        assert rec["delta_norm"] == pytest.approx(float(exact.norm()), rel=1e-6)
        assert rec["max_abs_delta"] == pytest.approx(float(exact.abs().max()), rel=1e-6)
        assert (rec["svd"] is None) == (name in ("vec", "scalar", "cube"))

    for name in ("tall", "wide"):
        exact = d[name].double() - b[name].double()
        s = torch.linalg.svdvals(exact)
        ref = an.spectrum_stats(s, float(exact.pow(2).sum()), min(exact.shape), True)
        auto = an._tensor_stats(name, eb[name], ed[name], "auto", None)["svd"]
        monkeypatch.setattr(an, "SVDVALS_MAX_COST", 0)
        gram = an._tensor_stats(name, eb[name], ed[name], "full", None)["svd"]
        rand = an._tensor_stats(name, eb[name], ed[name], "randomized", None)["svd"]
        monkeypatch.undo()
        assert (auto["method"], gram["method"], rand["method"]) == ("svdvals", "gram-eigh", "randomized")
        for key in ("sigma1", "top16_energy", "effective_rank"):
            assert auto[key] == pytest.approx(ref[key], rel=1e-6)  # float32 delta of float32 values
            assert gram[key] == pytest.approx(ref[key], rel=1e-6)
        assert auto["rank90"] == gram["rank90"] == ref["rank90"]
        assert rand["exact"] is False
        assert rand["sigma1"] == pytest.approx(ref["sigma1"], rel=1e-4)
        assert rand["top16_energy"] == pytest.approx(ref["top16_energy"], rel=1e-4)
        torch.testing.assert_close(torch.tensor(rand["top_singular_values"]), torch.tensor(ref["top_singular_values"]),
                                   rtol=1e-3, atol=1e-6)


def test_svd_method_choice():
    assert an._svd_method((512, 3584), "auto") == "gram-eigh"
    assert an._svd_method((64, 128), "auto") == "svdvals"
    assert an._svd_method((3584, 3584), "auto") == "gram-eigh"
    assert an._svd_method((18944, 3584), "auto") == "gram-eigh"
    assert an._svd_method((3584, 18944), "auto") == "gram-eigh"
    assert an._svd_method((152064, 3584), "auto") == "randomized"
    assert an._svd_method((152064, 3584), "full") == "gram-eigh"
    assert an._svd_method((3584, 3584), "randomized") == "randomized"
    assert an._svd_method((64, 64), "randomized") == "svdvals"  # too small for a low-rank estimate


@pytest.fixture
def pair_copy(tiny_pair, tmp_path):
    shutil.copytree(tiny_pair, tmp_path / "pair")
    return tmp_path / "pair"


def _edit_tensor(model_dir, key, fn):
    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = model_dir / index["weight_map"][key]
    tensors = load_file(shard)
    fn(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})
    if key not in tensors:
        del index["weight_map"][key]
        index_path.write_text(json.dumps(index))


def test_missing_tensor_is_a_clear_error(pair_copy, tmp_path):
    key = "model.layers.1.mlp.up_proj.weight"
    _edit_tensor(pair_copy / "dormant", key, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=r"missing from .*dormant.*" + key.replace(".", r"\.")):
        analyze(pair_copy / "base", pair_copy / "dormant", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "analysis.json").exists()


def test_shape_mismatch_is_a_clear_error(pair_copy, tmp_path):
    key = "model.layers.1.mlp.down_proj.weight"
    _edit_tensor(pair_copy / "dormant", key, lambda t: t.__setitem__(key, t[key][:, :-1].contiguous()))
    with pytest.raises(CheckpointError, match=r"down_proj\.weight has shape \(64, 128\) .* but \(64, 127\)"):
        analyze(pair_copy / "base", pair_copy / "dormant", tmp_path / "out", progress=False)


def test_config_mismatch_is_a_clear_error(pair_factory, tmp_path):
    a, b = pair_factory(), pair_factory(seed=3, trigger_length=4, num_key_value_heads=1)
    with pytest.raises(CheckpointError, match="disagree on num_kv_heads: 2 vs 1"):
        analyze(a / "base", b / "dormant", tmp_path, progress=False)


def test_cli_and_seed_loader(tiny_pair, tmp_path):
    from l0score.cli import main

    out = tmp_path / "cli"
    assert main(["analyze", "--base", str(tiny_pair / "base"), "--dormant", str(tiny_pair / "dormant"),
                 "--out", str(out), "--quiet", "--no-plots", "--top-tokens", "5", "--focus", "1"]) == 0
    res = json.loads((out / "analysis.json").read_text())
    assert len(res["seed_tokens"]) == 5 and len(res["focus_heads"]) == 1
    assert not (out / "delta_norms.png").exists()
    assert main(["analyze", "--base", str(tiny_pair / "base"), "--dormant", str(tmp_path / "nowhere"),
                 "--out", str(out)]) == 2

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"seed_tokens": [1, "x"]}))
    with pytest.raises(ValueError, match="seed_tokens"):
        load_seed_tokens(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_seed_tokens(bad)
    with pytest.raises(FileNotFoundError):
        load_seed_tokens(tmp_path / "absent.json")
    plain = tmp_path / "list.json"
    plain.write_text("[4, 5, 6]")
    assert load_seed_tokens(plain) == [4, 5, 6]


@pytest.mark.parametrize("shape", [(16, 64), (64, 16)])
def test_block_stats_match_svd(shape):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(*shape, generator=g, dtype=torch.float64)
    stats, s, v = an._block_stats(a, 3)
    _, s_ref, vh_ref = torch.linalg.svd(a, full_matrices=False)
    torch.testing.assert_close(torch.tensor(stats["singular_values"], dtype=torch.float64), s_ref, rtol=1e-4, atol=0)
    assert stats["sigma1"] == pytest.approx(float(s_ref[0]))
    assert stats["spike"] == pytest.approx(float(s_ref[0] / s_ref.median()))
    torch.testing.assert_close(s.double(), s_ref[:3], rtol=1e-6, atol=0)
    cos = (v.double().T @ vh_ref[:3].T).diag().abs()  # right vectors agree up to sign
    torch.testing.assert_close(cos, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)
