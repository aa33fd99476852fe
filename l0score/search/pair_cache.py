"""Pair scans kept on disk per head: a scan already made for the same pair is reused, not recomputed.

A pair scan does not depend on the template (its cells are (query token, key token, offset) only),
so the key is the pair's Layer-0 content fingerprint (backends/table_cache.py, the one token tables
use), the table dtype, the baseline, the offsets, the pool and `top`; each head is one file, so a
scan of the focus heads and a later scan of all heads share the focus heads' work. A cached head
made with a larger `top` also serves a smaller one.

Location: $L0SCORE_CACHE/pairs/<key>/head<h>.json (default ~/.cache/l0score/pairs).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..backends.table_cache import fingerprint
from ..core.cache_dir import cache_dir
from .pairs import pair_scan


def cached_pair_scan(scorer, pool, offsets=(1,), top: int = 100, progress: bool = True, **scan_kw) -> dict:
    """pair_scan(scorer, pool, offsets, top) with finished heads read from and written to the cache.

    Returns pair_scan's result plus "cached_heads" (the heads read from disk) and "cache_dir"."""
    pool = torch.as_tensor(pool, dtype=torch.int64)
    offsets = [int(r) for r in offsets]
    folder = _folder(scorer, pool, offsets)
    per_head, cached = {}, []
    for h in scorer.heads:
        rows = _read(folder, h, top)
        if rows is not None:
            per_head[h] = rows
            cached.append(h)
    missing = [h for h in scorer.heads if h not in per_head]
    complete = True
    if missing:
        scan = pair_scan(scorer.with_heads(missing), pool, offsets=offsets, top=top, progress=progress, **scan_kw)
        complete = scan["complete"]
        for h, rows in scan["per_head"].items():
            per_head[int(h)] = rows
            _write(folder, int(h), top, rows)
    overall = sorted((row for rows in per_head.values() for row in rows), key=lambda x: -x["abs"])[:top]
    return {"top": overall, "per_head": per_head, "complete": complete, "cached_heads": cached,
            "cache_dir": str(folder)}


def _folder(scorer, pool: torch.Tensor, offsets) -> Path:
    table = getattr(scorer, "table", None)
    key = {"base": fingerprint(scorer.pair.base), "dormant": fingerprint(scorer.pair.dormant),
           "table": "direct" if table is None else str(table.q_base.dtype), "baseline": scorer.baseline_kind,
           "offsets": offsets, "pool": hashlib.sha1(pool.numpy().tobytes()).hexdigest()}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "pairs" / digest


def _read(folder: Path, head: int, top: int) -> list[dict] | None:
    path = folder / f"head{head}.json"
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or unreadable: scanned again and rewritten
    if payload.get("top", 0) < top:
        return None
    return payload["rows"][:top]


def _write(folder: Path, head: int, top: int, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"head{head}.json"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"top": top, "rows": rows}))
    os.replace(tmp, path)
