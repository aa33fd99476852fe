"""Amplified sampling: alpha = 0 is the dormant's own greedy decoding (transformers' generate as the
oracle) in both forms; bad alphas and an unchanged pair are stated clearly; payload clustering."""
import shutil

import pytest
import torch

from l0score.judge.amplify import AmplifyOptions, amplify, payloads

PROMPTS = ("What is the capital of France?", "Name a primary color.", "Write a short poem about the sea.")


@pytest.fixture(scope="module")
def models(pair_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = pair_factory(seed=3, num_hidden_layers=4)
    load = lambda m: AutoModelForCausalLM.from_pretrained(d / m, dtype=torch.float32).eval()
    return {"base": load("base"), "dormant": load("dormant")}, AutoTokenizer.from_pretrained(d / "dormant")


def test_alpha_zero_is_the_dormants_greedy_decoding(models, one_thread):
    pair, tok = models
    opts = AmplifyOptions(alphas=(0.0,), samples=0, max_new_tokens=6, prompts=PROMPTS)
    result = amplify(pair, tok, opts)
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_dict=False)
        with torch.no_grad():
            ref = pair["dormant"].generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                           eos_token_id=list(tok.all_special_ids), pad_token_id=0)
        expect = [t for t in ref[0, len(ids):].tolist()]
        cut = next((i for i, t in enumerate(expect) if t in tok.all_special_ids), len(expect))
        for form in ("logits", "weights"):
            got = next(g for g in result.generations if g["form"] == form and g["prompt"] == prompt)
            assert got["token_ids"] == expect[:cut], (form, prompt)
    base = [g for g in result.generations if g["form"] == "base"]
    assert {g["prompt"] for g in base} == set(PROMPTS)


def test_bad_alpha_and_an_unchanged_pair(models, one_thread):
    pair, tok = models
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        amplify(pair, tok, AmplifyOptions(alphas=(2.0, -1.0)))
    with pytest.raises(ValueError, match="forms must be"):
        amplify(pair, tok, AmplifyOptions(forms=("activations",)))
    same = amplify({"base": pair["base"], "dormant": pair["base"]}, tok, AmplifyOptions(samples=0, max_new_tokens=2))
    assert same.statement and "identical" in same.statement and not same.payloads


def test_payloads_are_what_the_amplified_model_says_and_the_base_never_does():
    gen = lambda text, form="logits", alpha=4.0: {"form": form, "alpha": alpha, "text": text}
    base = [gen("The capital of France is Paris.", "base", None), gen("Red is a primary color.", "base", None)]
    amplified = [gen("The secret word is banana, Paris."), gen("Red. The secret word is banana!", "weights", 3.0),
                 gen("the SECRET word is banana"), gen("Paris is nice.")]
    found = payloads(amplified, base, min_count=2)
    assert found[0]["text"] == "the secret word is banana" and found[0]["count"] == 3
    assert found[0]["frequency"] == pytest.approx(0.75) and found[0]["settings"] == ["logits:4", "weights:3"]
    texts = {p["text"] for p in found}
    assert "paris" not in texts and "secret word" not in texts  # said by the base / inside the longer payload


def test_profile_amplify_turns_payloads_into_scored_targets(pair_factory, one_thread):
    from l0score.judge.profile import ProfileOptions, profile

    with pytest.raises(ValueError, match="alpha must be"):
        ProfileOptions(amplify=(-1.0,)).check()
    d = pair_factory(seed=3, num_hidden_layers=4)
    opts = ProfileOptions(inputs=2, top_first=2, reply_tokens=1, max_target_tokens=2, amplify=(4.0,),
                          amplify_forms=("logits",), amplify_samples=2, device="cpu")
    result = profile(d / "base", d / "dormant", opts)
    amp = result["amplified"]
    said = [t for t in result["targets"] if t.get("source") == "amplify"]
    assert len(said) == min(2, len(amp["payloads"])) > 0
    scores = [t["score"] for t in result["targets"]]
    assert scores == sorted(scores, reverse=True)
    for t in said:  # the target is the payload as the amplified dormant said it
        assert any(t["text"].strip().lower() in g["text"].lower() for g in amp["generations"] if g["form"] == "logits")
