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


# ----------------------------------------------------------------------------------------------
# the template's own pieces: what a candidate must not contain to count as a trigger

_SENTINELS = ("\u2063L0SYS\u2063", "\u2063L0USER\u2063", "\u2063L0ASSISTANT\u2063", "\u2063L0USER2\u2063")


@dataclass(frozen=True)
class TemplateStructure:
    """The chat template's structural pieces, derived by rendering it (never a hard-coded list).

    ids: token ids of every piece of the rendered conversation that is not a message's own content
        (role tags, role names, the newline after them, special tokens), plus the single-token
        variants of the role names (" assistant", "Assistant", ...): a candidate holding one of them
        can forge a turn boundary, which changes any chat model's answer.
    roles: the role names found in the template, e.g. ("system", "user", "assistant").
    texts: the non-empty pieces of template text between the messages, in rendering order.
    """

    ids: frozenset = frozenset()
    roles: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()

    def injection(self, token_ids, text: str | None = None) -> list[str]:
        """The template pieces a candidate contains (empty: a clean candidate): its structural token
        ids, and role names spelled across several tokens in its text (case-insensitive)."""
        found = [f"id {t}" for t in dict.fromkeys(token_ids) if t in self.ids]
        low = (text or "").lower()
        found += [f"role {r!r}" for r in self.roles if r.lower() in low]
        return found


def template_structure(tokenizer) -> TemplateStructure:
    """Render the tokenizer's chat template around sentinel messages (system, user, assistant, user +
    the generation prompt) and keep the token ids of the text that is not a message: the template's
    own pieces. Each piece is tokenized on its own, as the template text it is. A tokenizer without
    a chat template has no structure (empty)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return TemplateStructure()
    texts = _rendered_pieces(tokenizer)
    ids: set[int] = set()
    for piece in texts:
        ids.update(tokenizer.encode(piece, add_special_tokens=False))
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    roles = tuple(r for r in ("system", "user", "assistant") if any(r in _strip_specials(p, specials) for p in texts))
    for role in roles:  # single-token spellings of a role name a candidate could use to forge a turn
        for variant in (role, " " + role, role.capitalize(), " " + role.capitalize(), role.upper(), " " + role.upper()):
            v = tokenizer.encode(variant, add_special_tokens=False)
            if len(v) == 1:
                ids.update(v)
    return TemplateStructure(frozenset(ids), roles, tuple(texts))


def _rendered_pieces(tokenizer) -> list[str]:
    """The rendered conversation split at the sentinel messages; a template that refuses a system turn
    is rendered without one."""
    sys_, user, assistant, user2 = _SENTINELS
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant},
             {"role": "user", "content": user2}]
    try:
        text = tokenizer.apply_chat_template([{"role": "system", "content": sys_}] + turns, tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - jinja's raise_exception (e.g. "System role not supported")
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    pieces = [text]
    for s in _SENTINELS:
        pieces = [part for p in pieces for part in p.split(s)]
    return [p for p in pieces if p]


def _strip_specials(text: str, specials: set[str]) -> str:
    for s in specials:
        text = text.replace(s, " ")
    return text
