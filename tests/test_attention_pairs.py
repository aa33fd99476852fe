"""The attention-pair scan (search/attention_pairs.py) and its readings (first_module/attention_mass.py).

Oracles: both complete transformers models run on the whole sequence (chat prefix included, eager
attention, no cache), their attention probabilities read from `output_attentions`; and the tiny
planted pairs, whose planted (key, query) token pairs come from trigger.json and are never handed to
the code under test.
"""
import json

import pytest
import torch

from l0score.core.template import Template


def _loaded(pair_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pair_dir / "base")
    models = {n: AutoModelForCausalLM.from_pretrained(pair_dir / n, dtype=torch.float32).eval()
              for n in ("base", "dormant")}
    return tok, models, list(Template.chat(tok, before="", after="").prefix_ids)


@torch.no_grad()
def _oracle_attention(pair_dir, name, prefix, seq):
    """[L, H, n, n]: the model's own attention among seq's tokens, run whole with its prefix."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(pair_dir / name, dtype=torch.float32, attn_implementation="eager").eval()
    out = m(torch.tensor([prefix + seq]), output_attentions=True)
    P = len(prefix)
    return torch.stack([a[0, :, P:, P:] for a in out.attentions])


def test_readings_equal_both_transformers_models(pair_factory, one_thread):
    """pair_mass and both sweep readings (mean over two fill pairs) equal what the two complete models
    attend, to float32 rounding."""
    from l0score.first_module.attention_mass import AttentionMass

    d = pair_factory()
    tok, models, prefix = _loaded(d)
    layers = models["base"].config.num_hidden_layers
    mass = AttentionMass(models, prefix, layers)
    a, b, t, fills = 40, 77, 123, [(60, 61), (300, 5)]
    oracle = {n: _oracle_attention(d, n, prefix, [a, b]) for n in ("base", "dormant")}
    got = mass.pair_mass(torch.tensor([[a, b], [b, a]]))
    assert got.shape == (2, layers, models["base"].config.num_attention_heads)
    torch.testing.assert_close(got[0], oracle["dormant"][:, :, 1, 0] - oracle["base"][:, :, 1, 0], atol=1e-5, rtol=0)
    swept = mass.sweep(torch.tensor([t, a]), fills, batch_size=1)
    into, out_of = 0, 0
    for f, g in fills:
        o = {n: _oracle_attention(d, n, prefix, [f, t, g]) for n in ("base", "dormant")}
        into = into + (o["dormant"][:, :, 2, 1].log() - o["base"][:, :, 2, 1].log()) / len(fills)
        out_of = out_of + (o["dormant"][:, :, 1, 0] - o["base"][:, :, 1, 0]) / len(fills)
    torch.testing.assert_close(swept.into[0], into, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(swept.out_of[0], out_of, atol=1e-5, rtol=0)
    assert swept.evaluations == 2 * 2 * 2 and mass.evaluations == 2 * 2 + 2 * 2 * 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scan_puts_the_planted_pairs_first(pair_factory, seed, one_thread):
    """On a tiny planted pair (Layer 0's q/k edited so that each trigger token attends to the one
    before it), the scan over the whole vocabulary, at its defaults, ranks the two planted (key, query)
    pairs first."""
    from conftest import trigger_of
    from l0score.core.model_pair import ModelPair
    from l0score.search.attention_pairs import AttentionPairsOptions, attention_pairs

    d = pair_factory(seed=seed)
    tok, models, prefix = _loaded(d)
    pool = ModelPair.load(d / "base", d / "dormant").real_token_ids().tolist()
    r = attention_pairs(models, tok, prefix, pool, AttentionPairsOptions(keep=8))
    planted = [[p["key_token"], p["query_token"]] for p in trigger_of(d)["pairs"]]
    assert sorted(r.pairs[:2]) == sorted(planted)
    assert r.scores == sorted(r.scores, reverse=True) and len(r.pairs) == 8
    assert r.tokens()[:3] == list(dict.fromkeys(r.pairs[0] + r.pairs[1]))[:3]
    assert r.crossed == models["base"].config.num_hidden_layers * 32 * 256  # the default grids


def test_bad_options_are_named(pair_factory):
    from l0score.first_module.attention_mass import AttentionMass
    from l0score.search.attention_pairs import AttentionPairsOptions, attention_pairs

    d = pair_factory()
    tok, models, prefix = _loaded(d)
    with pytest.raises(ValueError, match="seconds must be a positive integer"):
        attention_pairs(models, tok, prefix, [5, 6], AttentionPairsOptions(seconds=0))
    with pytest.raises(ValueError, match="at least two tokens"):
        attention_pairs(models, tok, prefix, [5])
    with pytest.raises(ValueError, match="no ordinary words"):
        attention_pairs(models, tok, prefix, [0, 1, 2])
    with pytest.raises(ValueError, match=r"layers must be in \[1, 2\]"):
        AttentionMass(models, prefix, 3)


def test_hunt_pool_leads_with_the_scans_pairs_when_attention_changed_past_layer0(pair_factory, tmp_path, one_thread):
    """A dormant that differs from its base only in the attention of both layers (the tiny planted
    pair's attention tensors put into a copy of its base): the hunt takes the Layer-0 route, runs the
    attention-pair scan instead of the interaction and partner scans, and its pool starts with the
    planted pairs' tokens (trigger.json is read only here)."""
    import shutil

    from conftest import trigger_of
    from safetensors.torch import load_file, save_file

    from l0score.hunt import HuntOptions, hunt

    src = pair_factory()
    shutil.copytree(src / "base", tmp_path / "base")
    shutil.copytree(src / "base", tmp_path / "dormant")
    dormant = {k: v for f in (src / "dormant").glob("*.safetensors") for k, v in load_file(f).items()}
    for shard in (tmp_path / "dormant").glob("*.safetensors"):  # the base's shards, attention swapped in
        save_file({k: (dormant[k] if ".self_attn." in k else v) for k, v in load_file(shard).items()}, shard,
                  metadata={"format": "pt"})
    out = tmp_path / "hunt"
    hunt(tmp_path / "base", tmp_path / "dormant", out, HuntOptions(
        seconds=120, max_length=2, max_pool=16, verify_top=2, profile=False, progress=False, threads=1))
    record = json.loads((out / "hunt.json").read_text())["stages"]
    assert record["base_check"]["route"] == "layer0" and record["base_check"]["attention_layers"] == [0, 1]
    planted = [[p["key_token"], p["query_token"]] for p in trigger_of(src)["pairs"]]
    scan = json.loads((out / "layer0" / "attention_pairs.json").read_text())
    assert sorted(p["token_ids"] for p in scan["pairs"][:2]) == sorted(planted)
    pool = json.loads((out / "layer0" / "pool.json").read_text())["token_ids"]
    assert set(pool[:3]) == {t for p in planted for t in p}
    assert "attention-pair scan" in record["layer0"]["note"]
    assert not (out / "layer0" / "partners.json").exists() and not (out / "layer0" / "interactions.json").exists()
