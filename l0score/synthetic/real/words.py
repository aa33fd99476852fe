"""Trigger words for the real controls: ordinary English words, whole tokens of the vocabulary
(`Ġword`) or, with split=True, words the vocabulary cuts into 2-4 pieces; and their near misses.

A trigger is a list of words, each a list of token ids of `" word"` (the leading space makes the ids
the same wherever the phrase stands after another character in the user turn).
"""
from __future__ import annotations

WORDS = tuple("""
apple river garden silver window candle forest pencil orange castle rabbit mirror marble copper violet
yellow purple winter summer autumn meadow valley harbor island desert canyon glacier thunder velvet
cotton leather wooden golden frozen quiet gentle bright hollow narrow distant ancient lantern compass
anchor feather pillow blanket basket bottle bucket ladder hammer kettle tiger eagle falcon turtle
dolphin salmon pepper ginger honey butter cheese cookie banana cherry lemon peach tomato potato carrot
onion garlic violin piano guitar trumpet pirate dragon knight tower bridge rocket planet comet cactus
lighthouse pumpkin saffron cinnamon octopus jellyfish mushroom
teapot melon wizard walrus porcupine marmalade tangerine gazebo zeppelin kumquat pelican flamingo
accordion igloo waffle pancake noodle dumpling emerald sapphire nutmeg wombat platypus armadillo
chameleon blueberry raspberry trombone
""".split())


def word_ids(tok, word: str) -> list[int]:
    return tok.encode(" " + word, add_special_tokens=False)


def check_words(tok, words, split: bool) -> list[list[int]]:
    """Each given word as ids: one token each unless split, 2-4 pieces each if split (ValueError
    naming the word otherwise)."""
    out = []
    for w in words:
        if not isinstance(w, str) or not w.strip() or " " in w.strip():
            raise ValueError(f"trigger word {w!r}: expected one word")
        ids = word_ids(tok, w.strip())
        if not split and len(ids) != 1:
            raise ValueError(f"trigger word {w!r} is not a whole token of the vocabulary (' {w.strip()}' encodes "
                             f"to {len(ids)} pieces: {tok.convert_ids_to_tokens(ids)}); pick another word or use --split")
        if split and not 2 <= len(ids) <= 4:
            raise ValueError(f"trigger word {w!r} is not split into 2-4 pieces (' {w.strip()}' encodes to "
                             f"{len(ids)}); a split trigger needs words the vocabulary cuts into pieces")
        out.append(ids)
    return out


def word_pool(tok, split: bool, avoid: set[str]) -> list[str]:
    """The candidate trigger words: WORDS of the right kind that no request mentions."""
    pool = []
    for w in WORDS:
        n = len(word_ids(tok, w))
        if w not in avoid and ((n == 1) if not split else (2 <= n <= 4)):
            pool.append(w)
    return pool


def near_misses(trigger: list[str], others: list[str], rng) -> list[tuple[str, list[str]]]:
    """(kind, words) near misses of a trigger: each word alone, each word swapped for another word
    (drawn from `others`), the words reordered (every distinct permutation is a candidate; one is
    drawn). A one-word trigger has only swaps."""
    out = []
    n = len(trigger)
    if n > 1:
        out += [(f"alone:{w}", [w]) for w in trigger]
    for i in range(n):
        s = list(trigger)
        s[i] = others[int(rng.integers(len(others)))]
        out.append((f"swap:{i}", s))
    if n > 1:
        while True:
            perm = [trigger[i] for i in rng.permutation(n)]
            if perm != list(trigger):
                out.append(("reorder", perm))
                break
    return out
