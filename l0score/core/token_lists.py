"""Small operations on lists of token ids shared by the hunt, its report, the profile and the controls."""
from __future__ import annotations

from collections.abc import Sequence


def contains(seq: Sequence, part: Sequence) -> bool:
    """Whether ``part`` occurs in ``seq`` as a contiguous run (both lists, or both tuples)."""
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def rank_union(lists: list[list[int]]) -> list[int]:
    """Interleave ranked lists (first of each, then second of each, ...) without repeats."""
    out, seen = [], set()
    for i in range(max((len(x) for x in lists), default=0)):
        for x in lists:
            if i < len(x) and x[i] not in seen:
                seen.add(x[i])
                out.append(x[i])
    return out


def distinct_words(ranked: list[int], tokenizer, n: int) -> list[int]:
    """The first n tokens of a ranking that spell different words (case and spaces aside): on a real
    full control the target gradient's second token was 'purple' after ' purple', whose partners are
    the same."""
    out, seen = [], set()
    for t in ranked:
        word = tokenizer.decode([t]).strip().lower()
        if word not in seen:
            seen.add(word)
            out.append(t)
        if len(out) == n:
            break
    return out
