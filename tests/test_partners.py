"""The target proposer's two parts: the partner sweep equals transformers' own hidden states of both
models, and the target gradient's best tokens raise the exact full-model target metric more than its
worst ones."""
import shutil

import pytest
import torch

from l0score.first_module import FirstModuleScorer
from l0score.first_module.partners import PartnerOptions, partner_sweep

LAYER = 1


@pytest.fixture(scope="module")
def mlp_pair(pair_factory, tmp_path_factory):
    """A 4-layer base and a dormant whose layer-1 MLP alone is perturbed."""
    from transformers import AutoModelForCausalLM

    src = pair_factory(seed=3, num_hidden_layers=4) / "base"
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in ("gate_proj", "down_proj"):
            w = getattr(model.model.layers[LAYER].mlp, name).weight
            w += 0.3 * w.std() * torch.randn(w.shape, generator=gen)
    out = tmp_path_factory.mktemp("partners_mlp")
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, out)
    return src, out


@torch.no_grad()
def _divergence(base, dormant, ids, row, layer):
    """1 - cos of the two models' hidden_states[layer] at one row (transformers' own forward)."""
    from transformers import AutoModelForCausalLM

    states = [AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)(torch.tensor([ids]), output_hidden_states=True)
              .hidden_states[layer][0, row].double() for p in (base, dormant)]
    return float(1 - torch.nn.functional.cosine_similarity(states[0], states[1], dim=0))


@pytest.mark.parametrize("side", ["right", "left"])
def test_partner_values_equal_both_transformers_models(mlp_pair, side, one_thread):
    """div{k} of partner t: 1 - cos at layer 1 + k of [anchor, t] at t's row (right) or of [t, anchor]
    at the anchor's row (left), the chat prefix before the pair and nothing after it."""
    base, dormant = mlp_pair
    scorer = FirstModuleScorer.from_pretrained(base, dormant, location=f"mlp@L{LAYER}", device="cpu")
    anchor, pool = 40, (30, 41, 57, 40, 63)
    r = partner_sweep(scorer, anchor, PartnerOptions(depths=(1, 2), side=side, pool=pool, batch_size=2))
    assert r.token_ids.tolist() == [30, 41, 57, 63]  # the anchor is no partner of itself
    prefix = list(scorer.template.prefix_ids)
    for i, t in enumerate(r.token_ids.tolist()):
        ids = prefix + ([anchor, t] if side == "right" else [t, anchor])
        for k in (1, 2):
            expect = _divergence(base, dormant, ids, len(ids) - 1, LAYER + k)
            assert float(r.values[f"div{k}"][i]) == pytest.approx(expect, rel=1e-4, abs=1e-7)


def test_partner_options_are_checked(mlp_pair):
    base, dormant = mlp_pair
    scorer = FirstModuleScorer.from_pretrained(base, dormant, location=f"mlp@L{LAYER}", device="cpu")
    with pytest.raises(ValueError, match="side"):
        partner_sweep(scorer, 40, PartnerOptions(side="middle"))
    with pytest.raises(ValueError, match="depths"):
        partner_sweep(scorer, 40, PartnerOptions(depths=(0,)))
    with pytest.raises(ValueError, match="other than the anchor"):
        partner_sweep(scorer, 40, PartnerOptions(pool=(40,)))
    # depths past the last layer (4 layers, first change at 1: k <= 3) are left out
    deep = partner_sweep(scorer, 40, PartnerOptions(depths=(2, 3, 4, 5), pool=(41, 42)))
    assert sorted(deep.values) == ["div2", "div3"]
    assert sorted(partner_sweep(scorer, 40, PartnerOptions(depths=(6,), pool=(41,))).values) == ["div3"]


def test_target_gradient_best_tokens_raise_the_exact_target_more(pair_factory, one_thread):
    """The gradient only proposes; the exact full-model target metric (no gradient) is the oracle: a
    candidate of the ranking's 8 best tokens raises the dormant's log-mass on the target over the
    base's more, on average, than one of its 8 worst."""
    from l0score.judge.fullmodel import FullModelOptions, FullModelScorer
    from l0score.search.target_gradient import TargetGradientOptions, target_gradient

    src = pair_factory(seed=0)
    fm = FullModelScorer(src / "base", src / "dormant", FullModelOptions(device="cpu"))
    pool = fm.default_pool()[:400].tolist()
    target = pool[7]
    res = target_gradient(fm, (target,), pool, TargetGradientOptions(length=1, fills=3, seed=0))
    assert res.fills == 3 and len(res.objective) == 3 and res.token_ids.tolist() == pool
    order = res.ranking("gradient").tolist()
    exact = fm.with_options(target_ids=(target,), metrics=("target",))
    best = exact.score_batch([[t] for t in order[:8]]).metric("target").mean()
    worst = exact.score_batch([[t] for t in order[-8:]]).metric("target").mean()
    assert best > worst
    with pytest.raises(ValueError, match="target token"):
        target_gradient(fm, (), pool)


def test_anchors_are_distinct_words():
    """' purple', 'purple' and ' Purple' are one anchor: their partners would be swept twice."""
    from l0score.core.token_lists import distinct_words as _distinct_words

    class Tok:
        words = {1: " purple", 2: "purple", 3: " Purple", 4: " honey", 5: " evil"}

        def decode(self, ids):
            return self.words[ids[0]]

    assert _distinct_words([1, 2, 3, 4, 5], Tok(), 2) == [1, 4]
    assert _distinct_words([2, 1], Tok(), 3) == [2]


def test_pairs_put_each_anchor_beside_its_best_partner_in_reading_order():
    from l0score.search.target_proposer import TargetProposerResult

    res = TargetProposerResult(picks=[], gradient=None, partners={},
                               partner_order={(7, "right"): [9, 4], (7, "left"): [3], (8, "right"): []})
    assert res.pairs() == [[7, 9], [3, 7]]


def test_partner_scan_finds_the_planted_pairs_partners_on_the_right_side(pair_factory, one_thread):
    """On the tiny planted pair (Layer 0's q/k edited so that each trigger token attends to the one
    before it; the trigger comes from trigger.json, never from the code under test), with a junk
    token as the first anchor: the key token's best right partner is its query token, the query
    token's best left partner is its key token, and pairs() reads them in that order."""
    from conftest import trigger_of
    from l0score.search.partner_scan import PartnerScanOptions, partner_scan

    pair = pair_factory()
    planted = trigger_of(pair)["pairs"][0]
    key, query = planted["key_token"], planted["query_token"]
    scorer = FirstModuleScorer.from_pretrained(pair / "base", pair / "dormant", location="attn@L0", device="cpu",
                                               check=False)  # every tensor carries small noise
    allowed = scorer.default_pool().tolist()
    junk = next(t for t in allowed if t not in trigger_of(pair)["trigger_ids"])
    r = partner_scan(scorer, [junk, key, query], allowed, PartnerScanOptions(anchors=3, keep=4))
    assert r.anchors == [junk, key, query]
    assert r.order[(key, "right")][0] == query and r.order[(query, "left")][0] == key
    assert [key, query] in r.pairs() and all(len(p) == 2 for p in r.pairs())
    assert r.evaluations == 3 * 2 * (len(allowed) - 1)
    with pytest.raises(ValueError, match="anchors must be a positive integer"):
        partner_scan(scorer, [key], allowed, PartnerScanOptions(anchors=0))
