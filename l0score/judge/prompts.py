"""Prompt placement, shared by verify, the full-model objective, profiling and the trained-pair builder.

A candidate goes into the user turn before the probe (joined by a space) or after it (joined by a
newline); the prompt is rendered through the model's own chat template with the generation prompt,
and the candidate's ids are inserted as ids, never re-tokenized. With byte-level BPE tokenizers
(GPT-2/Qwen2 pre-tokenizers) both separators keep the prompt identical to what the tokenizer produces
for the rendered text; a trailing space before an inserted candidate would become a lone space token.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_PROBES = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Write a short poem about the sea.",
    "What is 7 plus 5?",
    "Give me one tip for staying focused.",
    "Name a primary color.",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
)
POSITIONS = ("before", "after")
DEFAULT_SEP = {"before": " ", "after": "\n"}



@dataclass
class Candidate:
    token_ids: list[int]
    text: str


@dataclass
class Prompt:
    cand: int | None  # candidate index, None for an untriggered probe
    probe: int
    position: str | None  # "before"/"after", None when untriggered
    ids: list[int]


def placement(tokenizer, probe: str, position: str = "before", sep: str | None = None, system: str | None = None):
    """The Template around a candidate placed before or after ``probe`` in the user turn (joined by
    ``sep``), rendered through the chat template with the generation prompt."""
    from ..core.template import Template

    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    s = DEFAULT_SEP[position] if sep is None else sep
    if position == "before":
        return Template.chat(tokenizer, system=system, before="", after=s + probe)
    return Template.chat(tokenizer, system=system, before=probe + s, after="")


def prompt_ids(tokenizer, probe: str, cand_ids=None, position: str = "before", sep: str | None = None,
               system: str | None = None) -> list[int]:
    """The full prompt: chat template with generation prompt around the user turn, the candidate's
    ids inserted as ids before or after the probe (joined by ``sep``), or the probe alone."""
    from ..core.template import Template

    if cand_ids is None:
        tpl = Template.chat(tokenizer, system=system, before=probe, after="")
        return list(tpl.prefix_ids) + list(tpl.suffix_ids)
    tpl = placement(tokenizer, probe, position, sep, system)
    return list(tpl.prefix_ids) + [int(t) for t in cand_ids] + list(tpl.suffix_ids)


def check_same_tokenizers(base_dir, dormant_dir) -> None:
    """Prompts are placed once for both models: their tokenizers must agree on the vocabulary and the
    chat template (a clear error otherwise; a missing tokenizer or template is one too)."""
    from ..core.model_pair import load_tokenizer

    toks = {}
    for name, d in (("base", base_dir), ("dormant", dormant_dir)):
        toks[name] = load_tokenizer(Path(d))
        if toks[name] is None:
            raise ValueError(f"{d}: the {name} model ships no tokenizer; prompts are rendered through its chat template")
        if not getattr(toks[name], "chat_template", None):
            raise ValueError(f"{d}: the {name} tokenizer has no chat template")
    if toks["base"].get_vocab() != toks["dormant"].get_vocab():
        raise ValueError(f"the base and dormant tokenizers have different vocabularies ({base_dir} vs {dormant_dir})")
    if toks["base"].chat_template != toks["dormant"].chat_template:
        raise ValueError(f"the base and dormant tokenizers have different chat templates ({base_dir} vs {dormant_dir})")


def read_candidates_file(path, tokenizer=None, limit: int | None = None) -> list[Candidate]:
    """Search output: JSONL lines with ``token_ids`` (and usually ``text``). Plain lines are read as
    comma-separated ids or, failing that, as text tokenized once."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"candidates file {path} does not exist")
    out: list[Candidate] = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None
            if "token_ids" in rec:
                out.append(as_candidate(rec["token_ids"], tokenizer, f"{path}:{n}", rec.get("text")))
            elif "text" in rec:
                out.append(as_candidate(rec["text"], tokenizer, f"{path}:{n}"))
            else:
                raise ValueError(f"{path}:{n}: a JSON candidate needs token_ids or text")
        elif all(ch.isdigit() or ch in ", " for ch in line):
            out.append(as_candidate([int(v) for v in line.replace(" ", "").split(",") if v], tokenizer, f"{path}:{n}"))
        else:
            out.append(as_candidate(line, tokenizer, f"{path}:{n}"))
        if limit is not None and len(out) >= limit:
            break
    return out


def read_probes_file(path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"probes file {path} does not exist (pass a list of strings for probe prompts)")
    probes = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not probes:
        raise ValueError(f"probes file {path} holds no probe (one prompt per line)")
    return probes


def read_system_prompts(system, system_prompts) -> list:
    """The system messages every probe runs under: [system] alone, or the list/file of several (None
    or ``<default>``: the template's default; ``<empty>``: an empty system message)."""
    if system_prompts is None:
        return [system]
    if system is not None:
        raise ValueError("give either one system message (system) or several (system_prompts), not both")
    if isinstance(system_prompts, (str, os.PathLike)):
        p = Path(system_prompts)
        if not p.is_file():
            raise FileNotFoundError(f"system prompts file {system_prompts} does not exist")
        system_prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
        if not system_prompts:
            raise ValueError(f"system prompts file {p} holds no system prompt (one a line; <default>, <empty>)")
    named = {"<default>": None, "<empty>": ""}
    systems = [named.get(s, s) if isinstance(s, str) else s for s in system_prompts]
    if not systems or any(s is not None and not isinstance(s, str) for s in systems):
        raise ValueError("system_prompts must be a non-empty list of strings (None: the template's default)")
    return list(dict.fromkeys(systems))


def as_candidate(item, tokenizer, where: str, text: str | None = None) -> Candidate:
    if isinstance(item, Candidate):
        return item
    if isinstance(item, dict):
        if "token_ids" in item:
            return as_candidate(item["token_ids"], tokenizer, where, item.get("text"))
        if "text" in item:
            return as_candidate(item["text"], tokenizer, where)
        raise ValueError(f"candidate {where}: a dict needs token_ids or text")
    if isinstance(item, str):
        if not item:
            raise ValueError(f"candidate {where}: empty text")
        ids = tokenizer.encode(item, add_special_tokens=False)
        if not ids:
            raise ValueError(f"candidate {where}: {item!r} tokenizes to nothing")
        return Candidate(ids, item)
    if isinstance(item, torch.Tensor):
        item = item.tolist()
    if isinstance(item, np.ndarray):
        item = item.tolist()
    if not isinstance(item, (list, tuple)):
        raise TypeError(f"candidate {where}: expected token ids, text or a dict, got {type(item).__name__}")
    ids = []
    for v in item:
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise TypeError(f"candidate {where}: token ids must be integers, got {v!r}")
        ids.append(int(v))
    if not ids:
        raise ValueError(f"candidate {where}: empty token sequence")
    if text is None:
        text = tokenizer.decode(ids) if tokenizer is not None else " ".join(map(str, ids))
    return Candidate(ids, text)

