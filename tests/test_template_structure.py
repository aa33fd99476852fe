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
