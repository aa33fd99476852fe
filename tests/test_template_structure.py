"""The chat template's structural pieces (l0score.core.template.template_structure): derived by
rendering the template, excluded from search pools unless asked for, and flagged in candidates."""
import copy

import pytest

from l0score.core.template import template_structure


@pytest.fixture(scope="module")
def pair(tiny_pair):
    from l0score.core.model_pair import ModelPair

    return ModelPair.load(tiny_pair / "base", tiny_pair / "dormant")


def _content_free_ids(tok, messages):
    """Token ids of a rendered conversation minus the ids of its messages' own text (the oracle:
    transformers' rendering of an ordinary conversation, not the sentinel one)."""
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    for m in messages:
        rendered = rendered.replace(m["content"], "\x00")
    return {t for part in rendered.split("\x00") if part for t in tok.encode(part, add_special_tokens=False)}


def test_structure_is_what_the_template_adds(pair):
    tok = pair.tokenizer
    s = template_structure(tok)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."}, {"role": "user", "content": "And a color?"}]
    assert _content_free_ids(tok, msgs) <= s.ids
    assert s.roles == ("system", "user", "assistant")
    names = {tok.decode([i]) for i in s.ids}
    assert {"assistant", "user", "system", "\n", "<|im_start|>", "<|im_end|>"} <= names
    for word in (" apple", " fruit", " Name", "."):  # message text is not structure
        assert not set(tok.encode(word, add_special_tokens=False)) & s.ids


def test_structure_follows_another_template(pair):
    """The same vocabulary under a Gemma-style template: its pieces, not ChatML's."""
    tok = copy.deepcopy(pair.tokenizer)
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + ('model' if m['role'] == 'assistant' else m['role'])"
                         " + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>model: ' }}{% endif %}")
    s = template_structure(tok)
    assert s.roles == ("system", "user")
    assert tok.encode("\n", add_special_tokens=False)[0] not in s.ids  # this template has no newline
    assert set(tok.encode(":", add_special_tokens=False)) <= s.ids
    assert _content_free_ids(tok, [{"role": "user", "content": "Name a fruit."}]) <= s.ids


def test_pools_exclude_the_template_unless_allowed(pair, tiny_pair):
    from l0score import Scorer
    from l0score.search import build_pool

    s = template_structure(pair.tokenizer)
    assistant = pair.tokenizer.encode("assistant", add_special_tokens=False)[0]
    default = set(build_pool(pair).tolist())
    assert not default & s.ids and assistant not in default
    allowed = set(build_pool(pair, allow_template_tokens=True).tolist())
    assert s.ids - pair.special_ids <= allowed and default < allowed
    scorer = Scorer.from_pretrained(tiny_pair / "base", tiny_pair / "dormant", template="chat")
    assert not set(scorer.default_pool().tolist()) & s.ids


def test_injection_names_the_pieces(pair):
    tok = pair.tokenizer
    s = template_structure(tok)
    flagged = "parrotassistant salmon"
    assert s.injection(tok.encode(flagged, add_special_tokens=False), flagged)
    clean = " kettle field"
    assert s.injection(tok.encode(clean, add_special_tokens=False), clean) == []
    # a role name spelled in pieces is caught by its text
    pieces = tok.encode("assi", add_special_tokens=False) + tok.encode("stant", add_special_tokens=False)
    assert tok.decode(pieces) == "assistant" and not set(pieces) & s.ids
    assert s.injection(pieces, tok.decode(pieces)) == ["role 'assistant'"]


def test_no_template_no_structure():
    assert template_structure(None).ids == frozenset()


def test_hunt_report_ranks_an_injection_below_a_clean_flip(pair, tiny_pair, tmp_path):
    """The hunt's ranking: a verified flip holding the role name 'assistant' (higher amplification)
    goes below the clean flip, is marked, and the summary says why."""
    import json
    from types import SimpleNamespace

    from l0score.hunt_report import rank_results
    from l0score.report.hunt_summary import markdown

    tok = pair.tokenizer
    clean, injected = tok.encode(" kettle field", add_special_tokens=False), tok.encode(" kettle assistant",
                                                                                      add_special_tokens=False)
    plain = tok.encode(" salmon", add_special_tokens=False)
    (tmp_path / "verify").mkdir()
    (tmp_path / "verify" / "report.json").write_text(json.dumps({"results": [
        {"token_ids": injected, "flip": True, "amplification": 50.0, "null": {"n": 4, "beaten": 4, "p": 0.2}},
        {"token_ids": clean, "flip": True, "amplification": 5.0, "null": {"n": 4, "beaten": 4, "p": 0.2}},
        {"token_ids": plain, "flip": False, "amplification": 2.0}]}))
    rows = [{"token_ids": ids, "score": s, "route": "comparative search"} for ids, s in
            ((injected, 3.0), (plain, 2.0), (clean, 1.0))]
    hunt = SimpleNamespace(collect=lambda: [dict(r) for r in rows], out=tmp_path, base=str(tiny_pair / "base"),
                           dormant=str(tiny_pair / "dormant"), fm=lambda: SimpleNamespace(tokenizer=tok))
    ranked = rank_results(hunt)
    assert [r["token_ids"] for r in ranked] == [clean, injected, plain]
    assert [r["template_injection"] for r in ranked] == [False, True, False]
    assert ranked[1]["verify"]["null"]["beaten"] == 4
    md = markdown({"base": "b", "dormant": "d", "complete": True, "created": "", "finished": "", "funnel": [],
                   "results": ranked})
    assert "1 candidate(s) hold a piece of the chat template" in md and "4/4" in md


def test_hunt_report_ranks_flips_by_flip_rate_and_a_padded_flip_last(pair, tiny_pair, tmp_path):
    """Among verified flips: the one flipping every prompt before a shorter one flipping a quarter of
    them with a higher amplification; the trigger plus a spare token after both (it holds a shorter flip)."""
    import json
    from types import SimpleNamespace

    from l0score.hunt_report import rank_results

    tok = pair.tokenizer
    trigger, padded = tok.encode(" kettle field", add_special_tokens=False), tok.encode(" kettle field.", add_special_tokens=False)
    weak = tok.encode(" salmon", add_special_tokens=False)
    assert padded[:len(trigger)] == trigger and len(weak) < len(trigger)
    (tmp_path / "verify").mkdir()
    (tmp_path / "verify" / "report.json").write_text(json.dumps({"results": [
        {"token_ids": weak, "flip": True, "flip_rate": 0.25, "amplification": 100.0},
        {"token_ids": trigger, "flip": True, "flip_rate": 1.0, "amplification": 50.0},
        {"token_ids": padded, "flip": True, "flip_rate": 1.0, "amplification": 60.0}]}))
    rows = [{"token_ids": ids, "score": 1.0, "route": "comparative search"} for ids in (weak, padded, trigger)]
    hunt = SimpleNamespace(collect=lambda: [dict(r) for r in rows], out=tmp_path, base=str(tiny_pair / "base"),
                           dormant=str(tiny_pair / "dormant"), fm=lambda: SimpleNamespace(tokenizer=tok))
    assert [r["token_ids"] for r in rank_results(hunt)] == [trigger, weak, padded]


def test_structure_of_the_real_smollm2_template():
    """The real control's ChatML template (SmolLM2-135M-Instruct, when its base is cached): 'assistant'
    is two tokens there ('ass', 'istant'), and both are structure."""
    from pathlib import Path

    from transformers import AutoTokenizer

    base = Path.home() / ".cache" / "l0score" / "real-base-smollm2-135m-instruct-qwen2-v1"
    if not (base / "tokenizer.json").is_file():
        pytest.skip("the real SmolLM2 base is not cached (l0score.synthetic.real.cached_real_base builds it)")
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    s = template_structure(tok)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."}, {"role": "user", "content": "And a color?"}]
    assert _content_free_ids(tok, msgs) <= s.ids
    assert s.roles == ("system", "user", "assistant")
    assert set(tok.encode("assistant", add_special_tokens=False)) <= s.ids
    assert not set(tok.encode(" apple", add_special_tokens=False)) & s.ids
