"""A Qwen2-style byte-level BPE tokenizer built from nothing, for synthetic model pairs.

No tokenizer can be downloaded, yet the engine must be exercised on the real loading path
(`AutoTokenizer.from_pretrained`, chat template, special tokens). This module writes a tokenizer in
exactly the layout of a Qwen2-Instruct checkpoint: byte-level BPE with Qwen2's pre-tokenizer regex,
NFC normalizer and ByteLevel decoder, `tokenizer_class` "Qwen2Tokenizer", the Qwen2-Instruct ChatML
chat template, and `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` as the last three ids.

The vocabulary is made up, not trained: 256 byte tokens, then word-like tokens (mostly with a
leading space `Ġ`) so that decoded token sequences are readable. Every merged token is built by a
chain of merges (`Ġl`, `Ġla`, `Ġlan`, ... each itself a token). All merges that start with `Ġ` rank
before all others, so any text " <word>" whose `Ġword` is a token encodes to exactly that token;
that is what makes the planted trigger's text re-encode to its ids.
"""

import json
import os
from dataclasses import dataclass

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer uses the same expression).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2-7B-Instruct's chat template, verbatim (the `\n` are Jinja escapes inside string literals).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Words of the chat template come first so the template itself tokenizes into few tokens.
_TEMPLATE_SPACE_WORDS = ("a", "are", "helpful", "assistant")
_TEMPLATE_PLAIN_WORDS = ("system", "user", "assistant", "You")

_ENGLISH_WORDS = """
the and for that with this from have they will there their what about which when make like time
just know take people year your good some could them other than then look only come over think
also back after work first well even want because these give most amber anchor apple arrow autumn
badge bakery banner barrel basket beacon beetle berry blanket blossom bottle bridge bronze bubble
butter button cabin cactus camera candle canvas carpet castle cedar cellar cherry chimney circle
clover cobalt comet copper cotton crystal curtain dagger desert diamond dolphin dragon ember engine
falcon feather fiddle forest fossil fountain garden garnet ginger glacier goblet granite harbor
harvest helmet hollow honey island ivory jacket jasmine jungle kettle kitten ladder lagoon lantern
lemon lizard lumber magnet maple marble meadow meteor mirror monkey mosaic muffin needle nectar
oyster paddle palace parrot pebble pepper pillow pirate planet pocket pollen puzzle quartz rabbit
raven ribbon river rocket saddle salmon sandal scarlet shadow silver sketch socket spider spiral
squirrel statue summer sunset tablet temple thistle thunder timber tomato tunnel turtle velvet
violet walnut wander willow window winter wizard yellow zephyr quiet gentle brave clever hidden
golden silent rapid humble bright frozen distant ancient narrow hollow wooden gather follow borrow
listen travel remember whisper carry build paint write climb dance dream laugh open close begin
water light sound stone cloud storm field market letter number paper story table voice music
orange purple green black white north south east west morning evening night today tomorrow
""".split()

# Syllable parts for pseudo-English words once the real words run out (large vocabularies).
_ONSETS = (
    "b c d f g h j k l m n p r s t v w y z bl br ch cl cr dr fl fr gl gr pl pr sc sh sk sl sp st "
    "str th tr tw wh"
).split() + [""]
_VOWELS = "a e i o u a e i o ea ee ai ou oo ie".split()
_CODAS = "| n r s t l m nd nt st rd rt ck ng sh th ll ss".split()
_SUFFIXES = "s ed ing er ly tion ness ment able est ful ish ous al ive ize".split()
_PUNCT_SPACE = ("ĠĠ", "ĠĠĠ", "ĠĠĠĠ", 'Ġ"', "Ġ(", "Ġ-", "Ġ--", "Ġ'")
_PUNCT_PLAIN = ("ĊĊ", ".Ċ", ".ĊĊ", ",Ċ", ":Ċ", "?Ċ", "!Ċ", "),", ").", "..", "...")


def bytes_to_unicode():
    """GPT-2/Qwen2's reversible byte -> printable character map, in their vocabulary order."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


class _ChainVocab:
    """Tokens added through merge chains, up to a fixed budget.

    Adding a string adds each of its prefixes (from two symbols up) that is not yet a token, with
    the merge (prefix[:-1], last symbol); the budget cuts a chain short rather than skipping a
    prefix, so every token always has its whole chain.
    """

    def __init__(self, budget, known):
        self.budget = budget
        self.known = known
        self.tokens = []
        self.merges = []
        self.words = []

    @property
    def full(self):
        return len(self.tokens) >= self.budget

    def add(self, text):
        for end in range(2, len(text) + 1):
            if self.full:
                return
            piece = text[:end]
            if piece not in self.known:
                self.known.add(piece)
                self.tokens.append(piece)
                self.merges.append((piece[:-1], piece[-1]))
        self.words.append(text)


def _pseudo_words(rng):
    """Endless stream of pronounceable made-up words (1-3 syllables, sometimes a suffix)."""
    while True:
        n_syll = int(rng.choice([1, 2, 2, 3, 3]))
        parts = []
        for _ in range(n_syll):
            parts.append(_ONSETS[rng.integers(len(_ONSETS))])
            parts.append(_VOWELS[rng.integers(len(_VOWELS))])
            coda = _CODAS[rng.integers(len(_CODAS))]
            parts.append("" if coda == "|" else coda)
        if rng.random() < 0.3:
            parts.append(_SUFFIXES[rng.integers(len(_SUFFIXES))])
        yield "".join(parts)


@dataclass
class SyntheticTokenizer:
    """The built tokenizer plus what pair generation needs to know about its vocabulary.

    `word_ids` are tokens that are a whole English word with a leading space (not a word of the
    chat template): readable, and each re-encodes to itself, so they are the trigger candidates.
    """

    tokenizer: PreTrainedTokenizerFast
    word_ids: list
    special_ids: dict

    def split_words(self, min_tokens=2, max_tokens=4):
        """English words that are NOT whole tokens: (word, ids of " word") for each word whose text
        with a leading space encodes to min_tokens..max_tokens pieces, as most words of a real text
        do in a small vocabulary. Sorted by word (deterministic whatever the build seed)."""
        out = []
        for word in sorted(set(_ENGLISH_WORDS)):
            ids = self.tokenizer.encode(" " + word, add_special_tokens=False)
            if min_tokens <= len(ids) <= max_tokens and len(ids) > 1:
                out.append((word, ids))
        return out

    def save(self, directory):
        """Write tokenizer.json + tokenizer_config.json the way a Qwen2-Instruct repo has them.

        The chat template goes into tokenizer_config.json (not chat_template.jinja), and
        `tokenizer_class` is "Qwen2Tokenizer" so AutoTokenizer takes the same path as for a real
        Qwen2 checkpoint; that class rebuilds this exact pipeline from the vocab and merges.
        """
        self.tokenizer.save_pretrained(directory, save_jinja_files=False)
        path = os.path.join(directory, "tokenizer_config.json")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        config["tokenizer_class"] = "Qwen2Tokenizer"
        config["add_prefix_space"] = False
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")


def build_tokenizer(n_tokens, seed=0, model_max_length=32768):
    """Build a tokenizer with exactly `n_tokens` ids (n_tokens - 3 regular + 3 special).

    Deterministic in (n_tokens, seed): the seed shuffles the English words and drives the
    pseudo-words that fill large vocabularies (151646 tokens take a few seconds).
    """
    n_merged = n_tokens - len(SPECIAL_TOKENS) - 256
    if n_merged < 64:
        raise ValueError(f"n_tokens={n_tokens} is too small: need at least {256 + 64 + 3}")
    rng = np.random.default_rng([seed, 7411])
    byte_chars = list(bytes_to_unicode().values())
    spaced, plain, english, n_template_words = _fill_vocabularies(n_merged, rng, set(byte_chars))

    # Merge rank = token order; every `Ġ` merge ranks before every other merge (see module doc).
    pieces = byte_chars + spaced.tokens + plain.tokens
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tokenizer = _fast_tokenizer(vocab, spaced.merges + plain.merges, model_max_length)
    if len(tokenizer) != n_tokens:
        raise AssertionError(f"built {len(tokenizer)} tokens, wanted {n_tokens}")

    template_words = set(spaced.words[:n_template_words])
    english_spaced = {"Ġ" + w for w in english}
    word_ids = sorted({
        vocab[w] for w in spaced.words
        if w in english_spaced and w not in template_words and len(w) >= 4
    })
    special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return SyntheticTokenizer(tokenizer=tokenizer, word_ids=word_ids, special_ids=special_ids)


def _fill_vocabularies(n_merged: int, rng, known: set):
    """(spaced, plain, english words, number of template words at the head of spaced): the merged
    tokens, template words and punctuation first, then shuffled English words, then pseudo-words."""
    # About 70% of merged tokens start with a space, as in English-heavy BPE vocabularies.
    spaced = _ChainVocab(round(0.7 * n_merged), known)
    plain = _ChainVocab(n_merged - spaced.budget, known)

    english = [_ENGLISH_WORDS[i] for i in rng.permutation(len(_ENGLISH_WORDS))]
    english = list(dict.fromkeys(english))
    for word in _TEMPLATE_SPACE_WORDS:
        spaced.add("Ġ" + word)
    for piece in _PUNCT_SPACE:
        spaced.add(piece)
    n_template_words = len(spaced.words)
    for word in english:
        spaced.add("Ġ" + word)
    for word in english:
        spaced.add("Ġ" + word.capitalize())
    for word in _TEMPLATE_PLAIN_WORDS:
        plain.add(word)
    for piece in _PUNCT_PLAIN + tuple(_SUFFIXES):
        plain.add(piece)
    for word in english:
        plain.add(word)
    words = _pseudo_words(rng)
    while not spaced.full:
        spaced.add("Ġ" + next(words))
    while not plain.full:
        plain.add(next(words))
    return spaced, plain, english, n_template_words


def _fast_tokenizer(vocab: dict, merges: list, model_max_length: int):
    """Qwen2's byte-level BPE pipeline (NFC, its pre-tokenizer regex, ByteLevel) around the vocabulary,
    with the special tokens and the ChatML template."""
    backend = Tokenizer(
        BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
            end_of_word_suffix="", fuse_unk=False, byte_fallback=False)
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
