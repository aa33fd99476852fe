"""The token pool searched over: which vocabulary ids a driver may place in a candidate."""
from __future__ import annotations

import json
import re
import string
from pathlib import Path

import torch

_PRINTABLE = set(string.printable) - set("\x0b\x0c")


def build_pool(pair, *, ascii_only: bool = False, printable_only: bool = False, no_whitespace_only: bool = False,
               allow_regex: str | None = None, deny_regex: str | None = None, allow_list: str | Path | None = None,
               roundtrip: bool = False, allow_template_tokens: bool = False) -> torch.Tensor:
    """Allowed token ids, ascending. Special tokens and padding rows are always excluded, and so are
    the chat template's structural pieces (role names, the newline after a role tag: a candidate that
    forges a turn boundary is no trigger) unless `allow_template_tokens`.

    Text filters look at each token's decoded text; `roundtrip` keeps tokens whose text encodes
    back to the same single id. `allow_list` is a file of ids (one per line, or comma-separated).
    """
    ids = pair.real_token_ids(allow_template_tokens=allow_template_tokens).tolist()
    if allow_list is not None:
        wanted = _read_ids(allow_list)
        bad = [i for i in wanted if not 0 <= i < pair.n_tokens or i in pair.special_ids]
        if bad:
            raise ValueError(f"{allow_list}: id {bad[0]} is not a real, non-special token")
        present = set(ids)
        held = [i for i in wanted if i not in present]
        if held:
            raise ValueError(f"{allow_list}: id {held[0]} is a piece of the chat template (a role name or its "
                             "newline); pass --allow-template-tokens to search it")
        ids = sorted(set(ids) & set(wanted))
    text_filters = ascii_only or printable_only or no_whitespace_only or allow_regex or deny_regex or roundtrip
    if text_filters:
        tok = pair.tokenizer
        if tok is None:
            raise ValueError("token text filters need a tokenizer in the model directory")
        allow = re.compile(allow_regex) if allow_regex else None
        deny = re.compile(deny_regex) if deny_regex else None
        texts = tok.batch_decode([[i] for i in ids])
        keep = []
        for i, text in zip(ids, texts):
            if ascii_only and not text.isascii():
                continue
            if printable_only and not set(text) <= _PRINTABLE:
                continue
            if no_whitespace_only and not text.strip():
                continue
            if allow and not allow.search(text):
                continue
            if deny and deny.search(text):
                continue
            if roundtrip and tok.encode(text, add_special_tokens=False) != [i]:
                continue
            keep.append(i)
        ids = keep
    if not ids:
        raise ValueError("the token pool is empty after filters; loosen --ascii/--printable/--allow-regex/--deny-regex/"
                         "--allow-list")
    return torch.tensor(ids, dtype=torch.int64)


def roundtrips(tokenizer, ids: list[int]) -> bool:
    """Decoding then encoding gives the same ids (the text a user would type is this candidate)."""
    if tokenizer is None:
        return True
    return tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False) == list(ids)


def _read_ids(path) -> list[int]:
    text = Path(path).read_text()
    try:
        return [int(v) for v in re.split(r"[\s,]+", text.strip()) if v]
    except ValueError as exc:
        raise ValueError(f"{path}: allow-list must hold integer token ids ({exc})") from None


def read_pool_ids(path, top: int | None = None) -> list[int]:
    """Token ids to search over, in the file's order: analysis.json (its ranked seed_tokens), a JSON
    list of ids, search JSONL (every row's token_ids, best rows first), or plain ids. ``top``: the
    first N only."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pool file {path} does not exist")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"the pool's top must be a positive integer, got {top!r}")
    text = p.read_text().strip()
    try:
        if text.startswith(("{", "[")):
            try:
                rows = [json.loads(text)]
            except ValueError:  # JSONL: one search result a line
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            if isinstance(rows[0], list):
                ids = rows[0]
            elif "seed_tokens" in rows[0]:
                ids = rows[0]["seed_tokens"]
            else:
                ids = [t for row in rows for t in row["token_ids"]]
        else:
            ids = _read_ids(p)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected token ids (analysis.json, a JSON list, search JSONL or plain ids): "
                         f"{exc!r}") from None
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise ValueError(f"{path}: expected a non-empty list of integer token ids")
    ids = list(dict.fromkeys(ids))  # first occurrence keeps its rank
    return ids[:top] if top else ids


def interleave(primary, secondary, share: float, size: int) -> list[int]:
    """Up to `size` distinct tokens from two rankings, so that every prefix of the result holds about
    `share` of `secondary`'s picks (the primary's best comes first); a ranking that runs out leaves
    its places to the other."""
    ours, theirs = iter(primary), iter(secondary)
    out, seen, taken = [], set(), 0
    while len(out) < size:
        t = next(theirs, None) if taken < share * len(out) else None
        if t is None:
            t = next(ours, None)
            if t is None:
                t = next(theirs, None)
                if t is None:
                    break
        else:
            taken += 1
        if t not in seen:
            out.append(t)
            seen.add(t)
    return out
