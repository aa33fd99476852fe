"""The vocabulary sweep: a planted MLP change to one token's state is found on the whole vocabulary;
multi-depth rankings equal single-depth scorers; a killed sweep resumes to the same result."""
import shutil

import pytest
import torch

from l0score.core.template import Template
from l0score.first_module import FirstModuleScorer
from l0score.first_module.sweep import SweepOptions, sweep

LAYER = 1


@torch.no_grad()
def _mid_states(model, template, tokens):
    """post_attention_layernorm(m) at the candidate slot of layer LAYER, each token alone (transformers' own run)."""
    seen = {}
    ln = model.model.layers[LAYER].post_attention_layernorm
    hook = ln.register_forward_hook(lambda m, i, o: seen.update(n=o))
    try:
        ids = [list(template.prefix_ids) + [t] + list(template.suffix_ids) for t in tokens]
        model(torch.tensor(ids))
    finally:
        hook.remove()
    return seen["n"][:, len(template.prefix_ids)]


@pytest.fixture(scope="module")
def planted(pair_factory, tmp_path_factory):
    """A 4-layer base and a dormant whose layer-1 MLP alone changed: one hidden unit fires on the
    state of one chosen token at the user-message slot. Returns (base, dormant, token)."""
    from transformers import AutoModelForCausalLM

    from l0score.core.model_pair import ModelPair

    src = pair_factory(seed=4, num_hidden_layers=4)
    pair = ModelPair.load(src / "base", src / "dormant")
    template = Template.chat(pair.tokenizer)
    pool = pair.real_token_ids()
    token = int(pool[len(pool) // 3])
    model = AutoModelForCausalLM.from_pretrained(src / "base", dtype=torch.float32)
    states = _mid_states(model, template, pool.tolist())
    states = states - states.mean(0)
    u = states[pool.tolist().index(token)]
    u = u / u.norm()
    mlp = model.model.layers[LAYER].mlp
    with torch.no_grad():  # unit 0: silu(a u.n) * (a u.n), written out by a large down column
        mlp.gate_proj.weight[0] = 6 * u / states.norm(dim=-1).mean()
        mlp.up_proj.weight[0] = 6 * u / states.norm(dim=-1).mean()
        mlp.down_proj.weight[:, 0] = mlp.down_proj.weight.std() * 20 * torch.randn(len(u), generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("planted_mlp")
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / "base" / f, out)
    return src / "base", out, token


def test_sweep_finds_the_token_a_planted_mlp_unit_fires_on(planted, one_thread):
    base, dormant, token = planted
    scorer = FirstModuleScorer.from_pretrained(base, dormant, location=f"mlp@L{LAYER}", device="cpu")
    seen = []
    result = sweep(scorer, SweepOptions(depths=(1, 2)), progress=lambda done, total: seen.append((done, total)))
    assert len(result.token_ids) == len(scorer.default_pool()) and seen[-1] == (len(result.token_ids),) * 2
    assert result.rank_of(token, "mlp_cand") == 1
    assert result.rank_of(token, "div1") == 1
    assert result.tokens_per_second > 0


def test_multi_depth_rankings_equal_single_depth_scorers(planted, one_thread):
    """The sweep (one pass for every depth, the token's own row only) equals single-depth scorers over
    the whole template."""
    base, dormant, _ = planted
    pool = tuple(range(20, 60))
    scorer = FirstModuleScorer.from_pretrained(base, dormant, location=f"mlp@L{LAYER}", device="cpu")
    result = sweep(scorer, SweepOptions(depths=(1, 2), pool=pool, batch_size=16))
    for k in (1, 2):
        single = FirstModuleScorer.from_pretrained(base, dormant, location=f"mlp@L{LAYER}", k=k, device="cpu")
        expect = single.score_batch([[t] for t in pool])  # whole template: the suffix rows too
        torch.testing.assert_close(result.values[f"div{k}"], expect.metric("div_cand"), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(result.values["mlp_cand"], expect.metric("mlp_cand"), rtol=1e-5, atol=1e-8)


def test_a_killed_sweep_resumes_to_the_same_result(pair_factory, tmp_path, one_thread):
    """A full fine-tune (location "embed"): both models from their own embeddings."""
    d = pair_factory(seed=3, num_hidden_layers=4)
    scorer = FirstModuleScorer.from_pretrained(d / "base", d / "dormant", location="embed", k=1, device="cpu")
    pool = tuple(range(10, 110))
    whole = sweep(scorer, SweepOptions(depths=(1, 2), pool=pool, batch_size=16))
    ckpt = tmp_path / "sweep.pt"
    opts = SweepOptions(depths=(1, 2), pool=pool, batch_size=16, checkpoint=ckpt, checkpoint_every=0)

    def killed(done, total):
        if done >= 48:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(scorer, opts, progress=killed)
    with pytest.raises(ValueError, match="resume it"):
        sweep(scorer, opts)
    with pytest.raises(ValueError, match="other settings"):
        sweep(scorer, SweepOptions(depths=(1, 3), pool=pool, batch_size=16, checkpoint=ckpt, resume=True))
    opts.resume = True
    resumed = sweep(scorer, opts)
    assert resumed.swept == len(pool) - 48
    for name in ("div1", "div2"):
        torch.testing.assert_close(resumed.values[name], whole.values[name])


def test_delta_projection_points_at_planted_tokens(pair_factory, tmp_path):
    """Input side: a layer-0 gate/up change reading one token's normalised embedding ranks that token
    first; output side: a down-projection change writing another token's unembedding row ranks it first."""
    from transformers import AutoModelForCausalLM

    from l0score.analysis.delta_projection import DeltaProjectionOptions, delta_projection
    from l0score.core.model_pair import ModelPair

    src = pair_factory(seed=3, num_hidden_layers=4)
    pool = ModelPair.load(src / "base", src / "dormant").real_token_ids()
    reads, writes = int(pool[50]), int(pool[300])
    model = AutoModelForCausalLM.from_pretrained(src / "base", dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        mlp, e = model.model.layers[0].mlp, model.model.embed_tokens.weight[reads]
        x = model.model.layers[0].post_attention_layernorm.weight * e / e.pow(2).mean().sqrt()
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight += torch.outer(torch.randn(lin.out_features, generator=gen), x / x.norm()) * lin.weight.std()
        out_dir = model.lm_head.weight[writes] / model.model.norm.weight
        mlp.down_proj.weight += torch.outer(out_dir / out_dir.norm(), torch.randn(mlp.down_proj.in_features, generator=gen))
    dormant = tmp_path / "dormant"
    model.save_pretrained(dormant)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / "base" / f, dormant)
    result = delta_projection(src / "base", dormant, DeltaProjectionOptions(rank=4))
    assert result.modules == ["mlp 0"]
    assert result.rank_of(reads, "mlp0_in") == 1 and result.rank_of(reads, "in") == 1
    assert result.rank_of(writes, "mlp0_out") == 1
    assert delta_projection(src / "base", src / "base").unchanged
    with pytest.raises(ValueError, match="rank must be"):
        delta_projection(src / "base", dormant, DeltaProjectionOptions(rank=0))


def test_consensus_ranks_the_steady_token_over_one_ranking_outlier():
    """The consensus is the geometric mean of ranks: a token 2nd under both rankings beats one that is
    1st under one and last under the other; alone, a ranking's consensus keeps its order."""
    from l0score.first_module.ranking import Rankings

    ids = torch.tensor([10, 11, 12, 13, 14])
    a = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])  # 10 first ... 14 last
    b = torch.tensor([0.0, 9.0, 1.0, 2.0, 50.0])  # 14 first, 11 second, 10 last
    r = Rankings(ids, {"a": a, "b": b})
    r.add_consensus(["a", "b"])
    order = r.ranking("consensus").tolist()
    assert order[0] == 11  # ranks 2 and 2
    assert order.index(11) < order.index(10) and order.index(11) < order.index(14)
    alone = Rankings(ids, {"b": b})
    alone.add_consensus(["b"])
    assert alone.ranking("consensus").tolist() == [14, 11, 13, 12, 10]
    with pytest.raises(ValueError, match="unknown ranking"):
        Rankings(ids, {"a": a}).add_consensus(["c"])


def test_first_module_stage_pools_the_planted_token(planted, one_thread):
    """The hunt's stage: the planted token heads the pool (sweep on the module's own difference), the
    projection gets its share, and every candidate re-scores to its recorded score."""
    from l0score.analysis.delta_projection import delta_projection
    from l0score.search.first_module_stage import FirstModuleStageOptions, first_module_stage

    base, dormant, token = planted
    scorer = FirstModuleScorer.from_pretrained(base, dormant, location=f"mlp@L{LAYER}", device="cpu")
    proj = delta_projection(base, dormant)
    opts = FirstModuleStageOptions(k=0, depths=(), pool_size=16, projection_share=0.5, max_length=2, top=5)
    res = first_module_stage(scorer, opts, projection=proj)
    assert res.pool[0] == token and len(res.pool) == 16
    assert set(proj.top("in", 8)) <= set(res.pool)
    assert len(set(res.pool[:8]) & set(proj.top("in", 8))) >= 4  # a consumer cutting the pool keeps the share
    assert scorer.evaluations >= len(scorer.default_pool())  # the sweep's views count on the scorer
    for c in res.candidates:
        again = scorer.score_batch([c["token_ids"]]).metric("mlp_cand")[0]
        assert c["score"] == pytest.approx(float(again), rel=1e-5) and c["objective"] == f"mlp@L{LAYER}"
    with pytest.raises(ValueError, match="beyond the models' last layer"):
        first_module_stage(scorer, FirstModuleStageOptions(k=9))


def test_sweep_and_bench_commands(planted, tmp_path, one_thread):
    """`l0score sweep` finds the first changed module itself (base check) and ranks the planted token
    first; bad depths and a negative amplification are `error:` exit 2; `bench --first-module` runs."""
    import json

    from l0score.cli import main

    base, dormant, token = planted
    assert main(["sweep", "--base", str(base), "--dormant", str(dormant), "--out", str(tmp_path / "s"),
                 "--depths", "1", "--no-projection"]) == 0
    summary = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert summary["location"] == f"mlp@L{LAYER}" and summary["rankings"]["mlp_cand"][0]["id"] == token
    assert main(["sweep", "--base", str(base), "--dormant", str(dormant), "--out", str(tmp_path / "t"),
                 "--depths", "1,9"]) == 2
    assert main(["profile", "--base", str(base), "--dormant", str(dormant), "--out", str(tmp_path / "p"),
                 "--amplify=-2"]) == 2
    assert main(["bench", "--first-module", "--base", str(base), "--dormant", str(dormant), "--candidates", "8",
                 "--full-candidates", "2", "--sweep-tokens", "16", "--reps", "1", "--k", "1",
                 "--out", str(tmp_path / "b")]) == 0
    row = json.loads(next((tmp_path / "b").glob("first_module_*.json")).read_text())
    assert row["location"] == f"mlp@L{LAYER}" and set(row["rates"]) >= {"first_module", "full_model", "sweep_tokens"}
