"""The first-changed-module scorer against transformers' own modules of both models.

Pairs: a 4-layer tiny synthetic base, and dormant copies of it in which only chosen tensors of one
layer were perturbed (so everything before that module is bit-identical, as in a real partial
fine-tune). Oracles: both complete transformers models run on the whole sequence (eager), with
hooks on the changed module, their hidden states and final logits, reduced in float64 here.
"""
import math
import shutil

import numpy as np
import pytest
import torch

from l0score.core.template import Template
from l0score.first_module import FirstModuleScorer, Location
from l0score.first_module.location import first_changed

CANDS = [[40, 41, 42], [57, 99, 13], [200, 7, 300]]


def _perturb(model, layer, names, gen, scale=0.3):
    for name in names:
        w = model.get_submodule(f"model.layers.{layer}.{name}").weight
        size = w.std() if w.std() > 0 else w.abs().mean()  # a norm's weights may all be equal
        w += scale * size * torch.randn(w.shape, generator=gen)


@pytest.fixture(scope="module")
def variants(pair_factory, tmp_path_factory):
    """{"base": dir, "mlp@L1": dir, "attn@L2": dir, "attn@L1": dir, "same": dir}: dormant copies of a
    4-layer base (attn@L1: also layer 1's input norm, so the two models normalise the states differently)."""
    from transformers import AutoModelForCausalLM

    src = pair_factory(seed=3, num_hidden_layers=4) / "base"
    out = {"base": src}
    edits = {"mlp@L1": (1, ("mlp.gate_proj", "mlp.down_proj")), "attn@L2": (2, ("self_attn.q_proj", "self_attn.k_proj")),
             "attn@L1": (1, ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj")), "same": (0, ())}
    for name, (layer, names) in edits.items():
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        with torch.no_grad():
            _perturb(model, layer, names, torch.Generator().manual_seed(layer))
        d = tmp_path_factory.mktemp(name.replace("@", "_"))
        model.save_pretrained(d)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(src / f, d)
        out[name] = d
    return out


def _oracle_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@torch.no_grad()
def _mlp_io(model, layer, ids):
    """(input, output) of layer `layer`'s MLP over one whole sequence, by forward hooks."""
    seen = {}
    hook = model.model.layers[layer].mlp.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    try:
        out = model(torch.tensor([ids]), output_hidden_states=True)
    finally:
        hook.remove()
    return seen["x"][0].double(), seen["y"][0].double(), out


def test_mlp_difference_matches_both_transformers_models(variants, one_thread):
    """mlp_* from the shared trunk equal the relative difference of the two models' own layer-1 MLP
    outputs (hooks on the whole sequence), and div_* / logit_kl their hidden states and logits."""
    k = 3  # layer 1 + 3 = the last layer: logit_kl too
    scorer = FirstModuleScorer.from_pretrained(variants["base"], variants["mlp@L1"], location="mlp@L1", k=k, device="cpu")
    assert scorer.kind == "mlp@L1" and "logit_kl" in scorer.metrics
    got = scorer.score_batch(CANDS)
    t = scorer.template
    mb, md = _oracle_model(variants["base"]), _oracle_model(variants["mlp@L1"])
    for b, cand in enumerate(CANDS):
        ids = list(t.prefix_ids) + cand + list(t.suffix_ids)
        p, c = len(t.prefix_ids), len(cand)
        xb, yb, ob = _mlp_io(mb, 1, ids)
        xd, yd, od = _mlp_io(md, 1, ids)
        r = ((yd - yb).norm(dim=-1) / yb.norm(dim=-1))[p:]
        assert got.metric("mlp_max")[b] == pytest.approx(float(r.max()), rel=1e-5)
        assert got.metric("mlp_mean")[b] == pytest.approx(float(r.mean()), rel=1e-5)
        assert got.metric("mlp_cand")[b] == pytest.approx(float(r[:c].max()), rel=1e-5)
        hb, hd = ob.hidden_states[1 + k][0, p:].double(), od.hidden_states[1 + k][0, p:].double()
        div = 1 - torch.nn.functional.cosine_similarity(hd, hb, dim=-1)
        assert got.metric("div_max")[b] == pytest.approx(float(div.max()), rel=1e-4, abs=1e-7)
        assert got.metric("div_last")[b] == pytest.approx(float(div[-1]), rel=1e-4, abs=1e-7)
        lp_b, lp_d = (torch.log_softmax(o.logits[0, -1].double(), -1) for o in (ob, od))
        kl = float((lp_d.exp() * (lp_d - lp_b)).sum())
        assert got.metric("logit_kl")[b] == pytest.approx(kl, rel=1e-4, abs=1e-7)


@torch.no_grad()
def _layer_logits(model, layer, ids):
    """Pre-softmax logits [H, T, T] of layer `layer`, patched out of transformers' eager attention."""
    import transformers.models.qwen2.modeling_qwen2 as qwen2

    seen, original = {}, qwen2.eager_attention_forward

    def patched(module, query, key, value, attention_mask, scaling, *args, **kw):
        if module.layer_idx == layer:
            k = qwen2.repeat_kv(key, module.num_key_value_groups)
            seen["S"] = (torch.matmul(query.double(), k.double().transpose(2, 3)) * scaling)[0]
        return original(module, query, key, value, attention_mask, scaling, *args, **kw)

    qwen2.eager_attention_forward = patched
    try:
        model(torch.tensor([ids]))
    finally:
        qwen2.eager_attention_forward = original
    return seen["S"].numpy()


@pytest.mark.parametrize("backend", ["torch", "native", "triton"])
@pytest.mark.parametrize("region,location", [("candidate", "attn@L2"), ("all", "attn@L2"), ("candidate", "attn@L1"),
                                             ("all", "attn@L1")])
def test_attention_dS_matches_transformers_layer_logits(variants, region, location, backend, one_thread):
    """Per head, layer L's dS maximum and row KLs equal those of both models' own layer-L attention
    logits, on every backend of the layer-L path (torch reference math, fused native, Triton direct)."""
    layer = Location.parse(location).layer
    scorer = FirstModuleScorer.from_pretrained(variants["base"], variants[location], location=location,
                                               region=region, device="cpu", offsets=(0, 1, 3), backend=backend)
    assert (scorer.attention.kernel is None) == (backend == "torch")
    t = scorer.template
    pre = scorer._prefix(t)
    mb, md = _oracle_model(variants["base"]), _oracle_model(variants[location])
    got = scorer.score_batch(CANDS)
    for b, cand in enumerate(CANDS):
        ids = list(t.prefix_ids) + cand + list(t.suffix_ids)
        p, c, n = len(t.prefix_ids), len(cand), len(ids)
        sb, sd = _layer_logits(mb, layer, ids), _layer_logits(md, layer, ids)
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        inside = lambda x: (x >= p) & (x < p + c)
        scored = (j <= i) & ((inside(i) | inside(j)) if region == "candidate" else True)
        head_max = np.where(scored, np.abs(sd - sb), -np.inf).reshape(len(sb), -1).max(-1)
        rows = range(p if region == "candidate" else 0, n)
        head_kl = []
        for h in range(len(sb)):
            kl = 0.0
            for r in rows:
                ld = sd[h, r, :r + 1] - np.logaddexp.reduce(sd[h, r, :r + 1])
                lb = sb[h, r, :r + 1] - np.logaddexp.reduce(sb[h, r, :r + 1])
                kl += float(np.sum(np.exp(ld) * (ld - lb)))
            head_kl.append(kl)
        hidden = scorer.trunk.run(torch.tensor([cand + list(t.suffix_ids)]), p, pre["trunk"])
        stats = scorer.attention.run(hidden, c, pre["attn"])
        mine_max = stats.head_max[0].numpy()
        if region == "all":
            mine_max = np.maximum(mine_max, pre["attn"].stats.head_max[0].numpy())
        assert np.abs(mine_max - head_max).max() <= 1e-4
        band = [np.where(scored & (i - j == r), np.abs(sd - sb), -np.inf).max() for r in (0, 1, 3)]
        assert got.metric("band")[b] == pytest.approx(max(band), abs=1e-4)
        if region == "candidate":
            assert np.abs(stats.head_kl[0].numpy() - np.array(head_kl)).max() <= 1e-4
        assert got.metric("max_abs")[b] == pytest.approx(head_max.max(), abs=1e-4)
        assert got.metric("kl")[b] == pytest.approx(sum(head_kl), abs=1e-4 * len(head_kl))


@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("region", ["candidate", "all"])
def test_attention_kernel_backends_equal_the_torch_path(variants, region, backend, one_thread):
    """The fused layer-L paths give the torch path's values (which equal transformers', above) and argmax
    cells, over mixed candidate lengths (several groups, a repeated token), a head subset, band offsets
    and both templates (raw: no prefix)."""
    from l0score.first_module import FirstModuleOptions

    kw = dict(location="attn@L2", region=region, device="cpu", offsets=(0, 2, 5), heads=(1, 2))
    ref = FirstModuleScorer.from_pretrained(variants["base"], variants["attn@L2"], **kw)
    fused = FirstModuleScorer(variants["base"], variants["attn@L2"], FirstModuleOptions(**kw, backend=backend),
                              models=(ref.models["base"], ref.models["dormant"]))
    cands = [[5], [40, 41, 42], [57, 99, 13], [9, 9, 9, 9, 9], [200, 7, 300, 11, 12, 13, 14, 15, 16]]
    for template in ("chat", "raw"):
        want, got = ref.with_template(template).score_batch(cands), fused.with_template(template).score_batch(cands)
        for m in ref.metrics:
            assert torch.allclose(got.metric(m), want.metric(m), rtol=1e-5, atol=1e-5), (template, m)
        view_r, view_f = ref.with_template(template), fused.with_template(template)
        pre_r, pre_f = view_r._prefix(view_r.template), view_f._prefix(view_f.template)
        hidden = ref.trunk.run(torch.tensor([cands[-1] + list(view_r.template.suffix_ids)]),
                               len(view_r.template.prefix_ids), pre_r["trunk"])
        a, b = ref.attention.run(hidden, 9, pre_r["attn"]), fused.attention.run(hidden, 9, pre_f["attn"])
        assert torch.equal(a.head_pos, b.head_pos.to(a.head_pos))


def test_attention_backend_is_checked(variants, one_thread):
    with pytest.raises(ValueError, match="backend must be one of"):
        FirstModuleScorer.from_pretrained(variants["base"], variants["attn@L2"], location="attn@L2", device="cpu",
                                          backend="cuda")
    with pytest.raises(ValueError, match="backend apply to attention"):
        FirstModuleScorer.from_pretrained(variants["base"], variants["mlp@L1"], location="mlp@L1", device="cpu",
                                          backend="native")


def test_sweep_and_bench_on_an_attention_location_with_the_native_backend(variants, tmp_path, one_thread):
    """`sweep --backend native` ranks the vocabulary as the torch path does (same ids, values to 1e-5);
    `bench --first-module` at an attention location times the layer-L path on torch and native."""
    import json

    from l0score.cli import main

    pair = ["--base", str(variants["base"]), "--dormant", str(variants["attn@L2"])]
    ranks = {}
    for backend in ("torch", "native"):
        assert main(["sweep", *pair, "--location", "attn@L2", "--depths", "1", "--no-projection", "--device", "cpu",
                     "--backend", backend, "--top", "20", "--out", str(tmp_path / backend)]) == 0
        ranks[backend] = json.loads((tmp_path / backend / "sweep.json").read_text())["rankings"]
    for name in ("max_abs", "kl", "head_max_sum"):
        want, got = ranks["torch"][name], ranks["native"][name]
        assert [r["id"] for r in got] == [r["id"] for r in want]
        assert [r["value"] for r in got] == pytest.approx([r["value"] for r in want], rel=1e-5, abs=1e-6)
    assert main(["bench", "--first-module", *pair, "--location", "attn@L2", "--candidates", "16",
                 "--full-candidates", "1", "--sweep-tokens", "8", "--reps", "1", "--k", "0",
                 "--out", str(tmp_path / "b")]) == 0
    row = json.loads(next((tmp_path / "b").glob("first_module_*.json")).read_text())
    assert set(row["rates"]) >= {"first_module", "first_module_native", "attn_layer_torch", "attn_layer_native"}


def test_full_finetune_runs_both_models_from_their_own_embeddings(pair_factory, one_thread):
    """Location "embed" (every tensor changed, no shared trunk): div after k layers equals 1 - cos of
    the two models' own hidden_states[k]."""
    d = pair_factory(seed=3, num_hidden_layers=4)
    scorer = FirstModuleScorer.from_pretrained(d / "base", d / "dormant", location="embed", k=2, device="cpu",
                                               template="raw")
    got = scorer.score_batch(CANDS)
    mb, md = _oracle_model(d / "base"), _oracle_model(d / "dormant")
    for b, cand in enumerate(CANDS):
        with torch.no_grad():
            hb, hd = (m(torch.tensor([cand]), output_hidden_states=True).hidden_states[2][0].double() for m in (mb, md))
        div = 1 - torch.nn.functional.cosine_similarity(hd, hb, dim=-1)
        assert got.metric("div_cand")[b] == pytest.approx(float(div.max()), rel=1e-4, abs=1e-7)
        assert got.metric("div_last")[b] == pytest.approx(float(div[-1]), rel=1e-4, abs=1e-7)


def test_location_is_checked_against_the_weights(variants, pair_factory, one_thread):
    from transformers import AutoModelForCausalLM

    load = lambda name: AutoModelForCausalLM.from_pretrained(variants[name], dtype=torch.float32)
    base, mlp1, same = load("base"), load("mlp@L1"), load("same")
    assert first_changed(base, mlp1) == Location(1, "mlp")
    assert first_changed(base, same) is None
    with pytest.raises(ValueError, match="identical"):
        Location(0, "mlp").check(base, mlp1)  # layer 0's MLP did not change
    with pytest.raises(ValueError, match="not shared"):
        Location(2, "attn").check(base, mlp1)  # layer 1's MLP changed before it
    with pytest.raises(ValueError, match="beyond"):
        Location(4, "attn").check(base, mlp1)
    with pytest.raises(ValueError, match="k = 4 .* beyond the models' last layer"):
        FirstModuleScorer.from_pretrained(variants["base"], variants["mlp@L1"], location="mlp@L1", k=4, device="cpu")
    with pytest.raises(ValueError, match="needs the first changed module"):
        FirstModuleScorer.from_pretrained(variants["base"], variants["mlp@L1"], device="cpu")
    with pytest.raises(ValueError, match="must look like"):
        Location.parse("mlp-0")
    scorer = FirstModuleScorer.from_pretrained(variants["base"], variants["mlp@L1"], location="mlp@L1", device="cpu")
    with pytest.raises(ValueError, match="candidate 1: token id 9999"):
        scorer.score_batch([[1, 2], [9999]])
    with pytest.raises(ValueError, match="candidate 0: empty"):
        scorer.score_batch([[]])


@pytest.mark.parametrize("driver", ["beam", "coord", "exhaustive", "mcts"])
def test_every_driver_runs_on_the_first_module_scorer(variants, driver, one_thread):
    """Each search driver runs on the scorer and records its objective; the best result is the best
    of what the driver scored, re-scored identically."""
    import importlib

    scorer = FirstModuleScorer.from_pretrained(variants["base"], variants["mlp@L1"], location="mlp@L1", device="cpu")
    pool = torch.arange(100, 140)
    kw = dict(length=2, pool=pool, progress=False, budget=400, calibrate=16 if driver == "mcts" else 0, roundtrip="off")
    run = getattr(importlib.import_module(f"l0score.search.{driver}"), driver)
    results = run(scorer, objective="mlp_cand", **kw)
    assert results and {r["objective"] for r in results} == {"mlp@L1"}
    best = results[0]
    again = scorer.score_batch([best["token_ids"]]).metric("mlp_cand")[0]
    assert best["score"] == pytest.approx(float(again), rel=1e-5)
    assert best["score"] == max(r["score"] for r in results)


@pytest.mark.parametrize("name,location,metric", [("mlp@L1", "mlp@L1", "mlp_cand"), ("mlp@L1", "mlp@L1", "div_last"),
                                                  ("attn@L2", "attn@L2", "max_abs"), ("attn@L2", "attn@L2", "kl")])
def test_gradient_loss_is_the_scorers_metric(variants, name, location, metric, one_thread):
    """GCG's differentiable term at a candidate equals the scorer's exact value (smooth max at a small
    temperature: within tau * log(cells)), and its gradient reaches the candidate's rows."""
    from l0score.search.first_module_loss import FirstModuleLoss
    from l0score.search.token_gradient import embedding_rows

    scorer = FirstModuleScorer.from_pretrained(variants["base"], variants[name], location=location, k=1, device="cpu")
    tau = 1e-4
    loss = FirstModuleLoss(scorer, {metric: 1.0}, tau=tau)
    for cand in CANDS:
        rows = embedding_rows(scorer.pair, cand)
        value = loss(rows)
        exact = float(scorer.score_batch([cand]).metric(metric)[0])
        assert float(value.detach()) == pytest.approx(exact, rel=1e-4, abs=tau * 8)
        value.backward()
        assert rows["base"].grad is not None and rows["base"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no gradient for metric 'band'"):
        FirstModuleLoss(scorer, {"band": 1.0})


def test_gcg_runs_on_the_first_module_scorer(variants, one_thread):
    from l0score.search.gcg import gcg

    scorer = FirstModuleScorer.from_pretrained(variants["base"], variants["mlp@L1"], location="mlp@L1", device="cpu")
    res = gcg(scorer, objective="mlp_cand", length=3, steps=3, topk=4, batch=8, pool=torch.arange(100, 200),
              progress=False, calibrate=0, roundtrip="off")
    assert res.results and {r["objective"] for r in res.results} == {"mlp@L1"}
    best = res.results[0]
    assert best["score"] == pytest.approx(float(scorer.score_batch([best["token_ids"]]).metric("mlp_cand")[0]), rel=1e-5)


def test_location_from_the_base_check(variants, pair_factory):
    """The base check's first_changed (object or JSON dict) maps onto the scorer's location."""
    from l0score.analysis.base_check import BaseCheckOptions, base_check

    full = pair_factory(seed=3, num_hidden_layers=4)
    for dormant, expect in ((variants["mlp@L1"], "mlp@L1"), (variants["attn@L2"], "attn@L2"), (full / "dormant", "embed")):
        first = base_check(dormant, [variants["base"]], BaseCheckOptions()).first_changed
        assert Location.from_first_changed(first).name == expect
        assert Location.from_first_changed({"module": first.module, "layer": first.layer, "tensors": first.tensors}).name == expect
    assert Location.from_first_changed({"module": "norm", "layer": 3, "tensors": ["model.layers.3.post_attention_layernorm.weight"]}) == Location(3, "mlp")
    with pytest.raises(ValueError, match="no first module"):
        Location.from_first_changed({"module": "lm_head", "layer": None, "label": "lm_head", "tensors": ["lm_head.weight"]})


def test_search_command_on_the_first_module(variants, tmp_path, one_thread):
    """`search beam --first-module auto` finds the location by the base check, writes results whose
    objective is that location; a location whose module did not change is `error:` exit 2."""
    import json

    from l0score.cli import main

    pair = ["--base", str(variants["base"]), "--dormant", str(variants["mlp@L1"])]
    out = tmp_path / "beam.jsonl"
    assert main(["search", "beam", *pair, "--first-module", "auto", "--length", "2", "--budget", "600", "--width", "2",
                 "--out", str(out), "--quiet", "--allow-list", str(_ids_file(tmp_path, range(100, 140)))]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and {r["objective"] for r in rows} == {"mlp@L1"} and all("mlp_cand" in r for r in rows)
    assert main(["search", "coord", *pair, "--first-module", "attn@L0", "--length", "2", "--out", str(out)]) == 2


def _ids_file(tmp_path, ids):
    path = tmp_path / "allow.txt"
    path.write_text("\n".join(str(i) for i in ids) + "\n")
    return path
