"""Words grown from the pool's pieces by the base model: the pieces of a split trigger that rank nowhere.

A trigger word the vocabulary cuts into pieces (' flamingo' = ' flaming' 'o') reaches the pool only by
the pieces that carry the fine-tune's signal; the others ('o', 'us') are pieces of thousands of words
and no ranking of single tokens puts them near the top (docs/hunt.md, the split control). But a real
language model knows how a word goes on: after ' flaming' the base's most likely letter piece is 'o',
after ' plat' it is 'yp', then 'us'. So every word-start piece among the pool's first `starts` that the
base does not think ends a word is grown, piece by piece, along its `branch` most likely letter
continuations, until the base thinks the word has ended (the probability that the next token is not
a letter piece reaches `word_end`). The exhaustive search then takes words, each a pool token or a word
grown from one, instead of tokens (search/exhaustive.py `words=`).

Cost: one forward of the base over the prompt prefix and the word so far per grown piece, batched by
depth: a few hundred short sequences.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class WordCompletionOptions:
    """starts: the pool's first word-start pieces (a space, then a letter) that may be grown [24];
    branch: letter continuations followed from each piece [2]; max_pieces: pieces in a grown word, the
    start included [4]; min_logprob: the least natural-log probability of a continuation followed [-3];
    pool_logprob: the same for a letter piece of the pool, of which the `branch` likeliest are followed too [-8];
    pool_bonus: log-probability a grown word is credited with per distinct pool piece it holds, when the
    grown words of one start are ranked [5];
    word_end: the probability that a word has ended (the next token is not a letter piece) below which a
    piece is grown and at which a grown word is kept [0.5]; per_start: grown words kept per start, most
    likely first [1]; batch: sequences per forward [64]."""

    starts: int = 24
    branch: int = 2
    max_pieces: int = 4
    min_logprob: float = -3.0
    pool_logprob: float = -8.0
    pool_bonus: float = 5.0
    word_end: float = 0.5
    per_start: int = 1
    batch: int = 64

    def validate(self) -> None:
        for name in ("starts", "branch", "per_start", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"word completion: {name} must be a count >= 1, got {v!r}")
        if isinstance(self.max_pieces, bool) or not isinstance(self.max_pieces, int) or self.max_pieces < 2:
            raise ValueError(f"word completion: max_pieces must be >= 2 (a start and one piece), got {self.max_pieces!r}")
        if not 0.0 < self.word_end <= 1.0:
            raise ValueError(f"word completion: word_end must be a probability in (0, 1], got {self.word_end!r}")
        for name in ("min_logprob", "pool_logprob"):
            if getattr(self, name) > 0:
                raise ValueError(f"word completion: {name} is a log-probability (<= 0), got {getattr(self, name)!r}")


@dataclass
class WordCompletion:
    """words: every pool token in pool order, each word-start piece followed by the words grown from
    it; grown: one record per grown word (start, ids, text, log-probability of its pieces, the base's
    word-end probability after it); forwards: sequences the base ran; seconds."""

    words: list[list[int]]
    grown: list[dict] = field(default_factory=list)
    forwards: int = 0
    seconds: float = 0.0

    def to_json(self, tokenizer) -> dict:
        return {"words": [tokenizer.decode(w) for w in self.words], "word_ids": self.words,
                "grown": self.grown, "forwards": self.forwards, "seconds": round(self.seconds, 2)}


def word_completion(model, tokenizer, prefix_ids: list[int], pool: list[int],
                    options: WordCompletionOptions | None = None, allowed=None) -> WordCompletion:
    """Grow the word-start pieces of `pool` (module docstring) with `model` (the base) reading
    `prefix_ids` (the prompt before the candidate) and then the word; only through `allowed` tokens
    when given (the pool's filters: on the real split control the chat template's 'assistant' grew
    ' InstancePreprocess' into ' InstancePreprocessassistant')."""
    o = options or WordCompletionOptions()
    o.validate()
    t0 = time.monotonic()
    letters = letter_pieces(tokenizer, model.config.vocab_size)
    usable = letters.clone()  # the pieces a word may grow by; `letters` still says whether it ended
    if allowed is not None:
        ok = torch.zeros_like(letters)
        ok[[t for t in allowed if 0 <= t < len(ok)]] = True
        usable &= ok
    starts = [t for t in pool if _starts_word(tokenizer.decode([t]))][: o.starts]
    grown: dict[int, list[tuple[list[int], float, float]]] = {s: [] for s in starts}
    pooled = torch.tensor(sorted({t for t in pool if t < len(usable) and usable[t]}), dtype=torch.long)
    frontier = [([s], 0.0) for s in starts]
    forwards = 0
    while frontier:
        logp = _next_logprobs(model, prefix_ids, [w for w, _ in frontier], o.batch)
        forwards += len(frontier)
        ended = logp.exp().masked_fill(letters, 0.0).sum(-1)
        nxt = []
        for (word, lp), lrow, end in zip(frontier, logp, ended.tolist()):
            if len(word) > 1 and end >= o.word_end:
                grown[word[0]].append((word, lp, end))
                continue
            if end >= o.word_end or len(word) >= o.max_pieces:  # a whole word already, or too long
                continue
            nxt += [(word + [t], lp + v) for t, v in _continuations(lrow, usable, pooled, o)]
        frontier = nxt
    words, records = [], []
    # the likeliest, each of the pool's own pieces in it worth pool_bonus (the sweep saw them): on the
    # real split control a plain preference for pool pieces grew ' flaming' through the pooled 'yp' of
    # ' platypus' into ' flamingypants' instead of ' flamingo'
    in_pool = set(pooled.tolist())
    keep = {s: sorted(g, key=lambda r: -(r[1] + o.pool_bonus * len(in_pool.intersection(r[0][1:]))))[: o.per_start]
            for s, g in grown.items()}
    for t in pool:
        words.append([t])
        for ids, lp, end in keep.get(t, []):
            words.append(ids)
            records.append({"start": t, "ids": ids, "text": tokenizer.decode(ids), "logprob": round(lp, 3),
                            "end": round(end, 3)})
    return WordCompletion(words=words, grown=records, forwards=forwards, seconds=time.monotonic() - t0)


def _continuations(lrow: torch.Tensor, usable: torch.Tensor, pooled: torch.Tensor, o) -> list[tuple[int, float]]:
    """The `branch` most likely letter pieces at least min_logprob likely, and the `branch` most likely
    letter pieces of the pool at least pool_logprob likely (on the split control the sweep pooled 'yp'
    of ' platypus', which the base ranks first after ' plat' anyway; a rarer word needs the pool's
    piece where the base has many continuations)."""
    vals, ids = lrow.masked_fill(~usable, -float("inf")).topk(o.branch)
    out = {t: v for v, t in zip(vals.tolist(), ids.tolist()) if v >= o.min_logprob}
    if len(pooled):
        pv, pi = lrow[pooled].topk(min(o.branch, len(pooled)))
        out |= {int(pooled[i]): v for v, i in zip(pv.tolist(), pi.tolist()) if v >= o.pool_logprob}
    return list(out.items())


def letter_pieces(tokenizer, vocab_size: int) -> torch.Tensor:
    """Bool over the model's vocabulary rows: tokens whose text starts with a letter (a word goes on)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    n = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[t] for t in range(n)])
    mask[:n] = torch.tensor([s[:1].isalpha() for s in texts])
    return mask


def _starts_word(text: str) -> bool:
    return len(text) > 1 and text[0] == " " and text[1].isalpha()


@torch.no_grad()
def _next_logprobs(model, prefix_ids: list[int], words: list[list[int]], batch: int) -> torch.Tensor:
    """Log-probabilities of the next token after prefix + each word (words of one length at a time)."""
    out = []
    device = next(model.parameters()).device
    for s in range(0, len(words), batch):
        ids = torch.tensor([prefix_ids + w for w in words[s:s + batch]], dtype=torch.long, device=device)
        out.append(model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].float().log_softmax(-1).cpu())
    return torch.cat(out)
