"""Amplified sampling: make the dormant exaggerate what the fine-tune changed, and read what it says.

One alpha >= 0 for two forms, both equal to the dormant itself at alpha = 0:
* ``logits``:  decode from logits_d + alpha * (logits_d - logits_b) (both models step by step);
* ``weights``: decode from one model built in memory with W_d + alpha * (W_d - W_b) for every tensor
  (= W_b + (1 + alpha)(W_d - W_b): the issue's "W_base + a(W_d - W_base)" at a = 1 + alpha).
Over ordinary prompts (no trigger), greedy and sampled, next to the base's own generations. The
generations are clustered by the word n-grams they share; a *payload* is an n-gram that at least
``min_count`` amplified generations say and no base generation says, reported with its frequency
(share of the amplified generations) and where it appeared (form, alpha). Payloads become the
profile's targets (profile.py).
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field

import torch

from ..core.token_lists import contains
from .prompts import DEFAULT_PROBES, prompt_ids

FORMS = ("logits", "weights")


@dataclass
class AmplifyOptions:
    """alphas: amplification factors, each >= 0 (0 = the dormant as it is) [(2.0, 4.0)]
    forms: "logits" and/or "weights" [both]
    prompts: ordinary prompts [verify's 8 default probes]
    samples: sampled generations per prompt and setting, besides the greedy one [2]
    max_new_tokens [32]; temperature, top_p: of sampling [0.8, 0.95]; seed [0]
    min_count: generations that must say an n-gram for it to be a payload [2]; max_ngram: longest n-gram [8]
    system: system prompt (None: the chat template's default) [None]
    """

    alphas: tuple[float, ...] = (2.0, 4.0)
    forms: tuple[str, ...] = FORMS
    prompts: tuple[str, ...] | None = None
    samples: int = 2
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    min_count: int = 2
    max_ngram: int = 8
    system: str | None = None

    def check(self) -> None:
        if not self.alphas:
            raise ValueError("amplify needs at least one alpha")
        for a in self.alphas:
            if not isinstance(a, (int, float)) or isinstance(a, bool) or not math.isfinite(a) or a < 0:
                raise ValueError(f"amplification alpha must be a finite number >= 0 (0 = the dormant itself), got {a!r}")
        bad = [f for f in self.forms if f not in FORMS]
        if bad or not self.forms:
            raise ValueError(f"forms must be a non-empty subset of {', '.join(FORMS)}, got {list(self.forms)}")
        for name in ("max_new_tokens", "min_count", "max_ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples < 0:
            raise ValueError(f"samples must be >= 0, got {self.samples}")


@dataclass
class AmplifyResult:
    generations: list[dict]  # {form, alpha, prompt, mode, text, token_ids}; form "base" for the base's own
    payloads: list[dict]  # {text, count, frequency, settings}, most frequent first
    openings: list[dict]  # first words of amplified replies that no base reply starts with, with counts
    statement: str | None = None  # e.g. the pair has no change
    options: dict = field(default_factory=dict)


def amplify(models: dict, tokenizer, options: AmplifyOptions | None = None, stop_ids=None, progress=None) -> AmplifyResult:
    """models: {"base": ..., "dormant": ...} loaded transformers models (not modified).
    progress(done, total) after each (setting, prompt) decoded."""
    o = options or AmplifyOptions()
    o.check()
    stop = set(tokenizer.all_special_ids if stop_ids is None else stop_ids)
    prompts = list(DEFAULT_PROBES if o.prompts is None else o.prompts)
    batch = [prompt_ids(tokenizer, p, None, system=o.system) for p in prompts]
    settings = [("base", None)] + [(f, float(a)) for f in o.forms for a in o.alphas]
    if not _changed(models["base"], models["dormant"]):
        return AmplifyResult([], [], [], "the dormant is identical to the base: amplification changes nothing",
                             _described(o))
    gens, done = [], 0
    for form, alpha in settings:
        step = _stepper(models, form, alpha)
        for mode, seed in [("greedy", None)] + [("sample", o.seed + s) for s in range(o.samples)]:
            outs = _decode(step, batch, stop, o.max_new_tokens, seed, o.temperature, o.top_p)
            gens += [{"form": form, "alpha": alpha, "prompt": p, "mode": mode, "token_ids": ids,
                      "text": tokenizer.decode(ids, skip_special_tokens=True)} for p, ids in zip(prompts, outs)]
        del step  # a weights-form model is dropped before the next is built
        done += 1
        if progress is not None:
            progress(done, len(settings))
    amplified = [g for g in gens if g["form"] != "base"]
    base = [g for g in gens if g["form"] == "base"]
    return AmplifyResult(gens, payloads(amplified, base, o.min_count, o.max_ngram), openings(amplified, base),
                         None, _described(o))


def _described(o: AmplifyOptions) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in o.__dict__.items()}


def _changed(base, dormant) -> bool:
    pb = dict(base.named_parameters())
    return any(not torch.equal(p, pb[n]) for n, p in dormant.named_parameters())


def _stepper(models: dict, form: str, alpha: float | None):
    """A function (input_ids, caches, mask, positions) -> (next-token logits [B, V], caches)."""
    if form == "base":
        return _Single(models["base"])
    if form == "weights":
        return _Single(amplified_weights(models["base"], models["dormant"], alpha))
    return _Logits(models["base"], models["dormant"], alpha)


def amplified_weights(base, dormant, alpha: float):
    """A new model with every parameter W_d + alpha * (W_d - W_b) (the inputs are not modified)."""
    if alpha < 0:
        raise ValueError(f"amplification alpha must be >= 0, got {alpha}")
    model = copy.deepcopy(dormant)
    pb = dict(base.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if alpha:
                p.add_(p - pb[name].to(p.dtype), alpha=alpha)
    return model


class _Single:
    def __init__(self, model):
        self.models = {"m": model}

    def __call__(self, ids, caches, mask, positions):
        from .models import run_model

        out, caches["m"] = run_model(self.models["m"], ids, caches.get("m"), attention_mask=mask,
                                     position_ids=positions, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float(), caches


class _Logits:
    def __init__(self, base, dormant, alpha: float):
        self.models, self.alpha = {"base": base, "dormant": dormant}, alpha

    def __call__(self, ids, caches, mask, positions):
        from .models import run_model

        logits = {}
        for m, model in self.models.items():
            out, caches[m] = run_model(model, ids, caches.get(m), attention_mask=mask, position_ids=positions,
                                       use_cache=True, logits_to_keep=1)
            logits[m] = out.logits[:, -1].float()
        ld = logits["dormant"]
        return ld + self.alpha * (ld - logits["base"]), caches


@torch.no_grad()
def _decode(step, batch: list[list[int]], stop: set[int], max_new: int, seed, temperature: float, top_p: float):
    """Greedy (seed None) or seeded-sampled generations of a left-padded batch of prompts."""
    from .models import _choose

    device = next(iter(step.models.values())).device
    width = max(len(ids) for ids in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, row in enumerate(batch):
        ids[r, width - len(row):], mask[r, width - len(row):] = torch.tensor(row), 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    gens = [torch.Generator().manual_seed(seed * 7919 + r) for r in range(len(batch))] if seed is not None else None
    out: list[list[int]] = [[] for _ in batch]
    done = [False] * len(batch)
    logits, caches = step(ids, {}, mask, positions)
    for t in range(max_new):
        nxt = _choose(logits, seed is not None, temperature, top_p, gens)
        for r in range(len(batch)):
            if not done[r]:
                tok = int(nxt[r])
                done[r] = tok in stop
                if not done[r]:
                    out[r].append(tok)
        if all(done) or t == max_new - 1:
            break
        mask = torch.cat([mask, torch.ones((len(batch), 1), dtype=mask.dtype, device=device)], 1)
        positions = positions[:, -1:] + 1
        logits, caches = step(nxt[:, None].to(device), caches, mask, positions)
    return out


_WORD = re.compile(r"[\w']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def payloads(amplified: list[dict], base: list[dict], min_count: int = 2, max_ngram: int = 8) -> list[dict]:
    """Word n-grams (1..max_ngram) said by >= min_count amplified generations and by no base
    generation; an n-gram inside a longer kept one said as often is dropped (the longer one stands
    for the cluster). Most frequent first, then longest."""
    base_grams = set()
    for g in base:
        base_grams |= _ngrams(_words(g["text"]), max_ngram)
    where: dict[tuple[str, ...], list[int]] = {}
    for i, g in enumerate(amplified):
        for gram in _ngrams(_words(g["text"]), max_ngram) - base_grams:
            where.setdefault(gram, []).append(i)
    kept = {gram: idx for gram, idx in where.items() if len(idx) >= min_count}
    maximal = [gram for gram, idx in kept.items()
               if not any(len(o) > len(gram) and len(kept[o]) >= len(idx) and contains(o, gram) for o in kept)]
    maximal.sort(key=lambda gram: (-len(kept[gram]), -len(gram), gram))
    return [{"text": " ".join(gram), "count": len(kept[gram]), "frequency": len(kept[gram]) / len(amplified),
             "settings": sorted({f"{amplified[i]['form']}:{amplified[i]['alpha']:g}" for i in kept[gram]}),
             "said": _as_said(gram, amplified[kept[gram][0]]["text"])}
            for gram in maximal]


def _as_said(gram: tuple[str, ...], text: str) -> str:
    """The payload as a generation spelled it (case, punctuation; a leading space if one preceded it),
    so that it tokenizes as the model would say it."""
    found = re.search(r"(?<![\w'])" + r"[^\w']+".join(map(re.escape, gram)) + r"(?![\w'])", text, re.IGNORECASE)
    if found is None:
        return " ".join(gram)
    lead = " " if found.start() > 0 and text[found.start() - 1] == " " else ""
    return lead + found.group(0)


def openings(amplified: list[dict], base: list[dict]) -> list[dict]:
    """First words of amplified generations that no base generation starts with, with counts."""
    first = lambda g: (_words(g["text"]) or [""])[0]
    base_first = {first(g) for g in base}
    counts: dict[str, int] = {}
    for g in amplified:
        w = first(g)
        if w and w not in base_first:
            counts[w] = counts.get(w, 0) + 1
    return [{"word": w, "count": c, "frequency": c / len(amplified)}
            for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _ngrams(words: list[str], max_n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1)}
