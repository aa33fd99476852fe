"""Where a candidate sits: `prefix_ids + candidate + suffix_ids`, positions counted from 0."""
from __future__ import annotations

from dataclasses import dataclass

_MARK = "\u2063L0SCORE_CANDIDATE\u2063"  # never produced by a real chat template


@dataclass(frozen=True)
class Template:
    """Fixed context around every candidate. Candidate ids are inserted as ids, never re-tokenized."""

    prefix_ids: tuple[int, ...] = ()
    suffix_ids: tuple[int, ...] = ()
    name: str = "explicit"

    def __init__(self, prefix_ids=(), suffix_ids=(), name: str = "explicit"):
        object.__setattr__(self, "prefix_ids", _as_ids(prefix_ids, "prefix_ids"))
        object.__setattr__(self, "suffix_ids", _as_ids(suffix_ids, "suffix_ids"))
        object.__setattr__(self, "name", name)

    @classmethod
    def raw(cls) -> "Template":
        return cls((), (), name="raw")

    @classmethod
    def chat(cls, tokenizer, system: str | None = None, before: str = "", after: str = "",
             generation_prompt: bool = True) -> "Template":
        """The tokenizer's own chat template around a user message `before + <candidate> + after`.

        With system=None no system message is passed, so the template's default (if any) applies.
        """
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("Template.chat needs a tokenizer with a chat template")
        messages = [] if system is None else [{"role": "system", "content": system}]
        messages.append({"role": "user", "content": before + _MARK + after})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        if text.count(_MARK) != 1:
            raise ValueError("the chat template did not render the user message exactly once")
        head, tail = text.split(_MARK)
        encode = lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []
        return cls(encode(head), encode(tail), name="chat")

    @classmethod
    def resolve(cls, template, tokenizer) -> "Template":
        """None/"raw" -> raw, "chat" -> Template.chat(tokenizer), a Template as is."""
        if template is None or template == "raw":
            return cls.raw()
        if template == "chat":
            return cls.chat(tokenizer)
        if isinstance(template, Template):
            return template
        raise TypeError(f"template must be None, 'raw', 'chat' or a Template, got {template!r}")

    def __len__(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)


def _as_ids(ids, what: str) -> tuple[int, ...]:
    out = []
    for v in ids:
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise TypeError(f"{what} must hold integer token ids, got {v!r}")
        if int(v) < 0:
            raise ValueError(f"{what} holds a negative id {int(v)}")
        out.append(int(v))
    return tuple(out)
