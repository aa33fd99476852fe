"""Token tables on disk: built once per model and table dtype, reused by later runs.

A table file is keyed by a fingerprint of the model's Layer-0 tensors (content hash of the embedding,
norm, q/k weights and biases, plus the config fields the table depends on) and the table dtype, so
changed weights map to a new file and are never served a stale table. Every load is verified
against its header: magic and format version, fingerprint, dtype and shapes, exact file size
(truncation) and a content checksum of the payload (corruption). A file that fails any check is
reported, discarded and rebuilt. Writes go to a temporary file renamed into place, so a crash never
leaves a half-written table under the real name.

Location: $L0SCORE_CACHE/tables (default ~/.cache/l0score/tables).
File layout: 8-byte magic, 8-byte little-endian header length, JSON header, zero padding to a
4096-byte boundary, then the q table [V, H, D] and the k table [V, KV, D] in the table dtype.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import _native
from ..core.cache_dir import cache_dir
from ..core.checkpoint import Layer0Weights

MAGIC = b"L0SCTBL1"
FORMAT_VERSION = 2  # part of the fingerprint: 2 = rows built with double sums (table_build.cpp), so older files rebuild
ALIGN = 4096
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SUFFIX = ".l0table"

_FINGERPRINTS: dict[int, tuple[weakref.ref, str]] = {}


class CacheWarning(UserWarning):
    """A cached table was unusable (corrupt, truncated, stale) or could not be written."""


@dataclass
class CacheInfo:
    """What happened for one model's table: source is "cache" or "built"."""

    path: Path | None
    source: str
    seconds: float
    reason: str = ""


def table_dir() -> Path:
    path = cache_dir() / "tables"
    path.mkdir(parents=True, exist_ok=True)
    return path


def as_bytes(t: torch.Tensor) -> np.ndarray:
    """A zero-copy uint8 view of a contiguous CPU tensor of any dtype."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return t.reshape(-1).view(torch.uint8).numpy()


def fingerprint(weights: Layer0Weights) -> str:
    """Content fingerprint of one model's Layer-0 tensors and table-relevant config (memoised per object)."""
    hit = _FINGERPRINTS.get(id(weights))
    if hit is not None and hit[0]() is weights:
        return hit[1]
    cfg = weights.config
    h = hashlib.sha256()
    h.update(f"l0score-table-v{FORMAT_VERSION}".encode())
    fields = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, repr(float(cfg.rms_norm_eps)), cfg.vocab_rows)
    h.update(repr(fields).encode())
    for name in ("embed", "norm", "wq", "bq", "wk", "bk"):
        t = getattr(weights, name)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:{_native.checksum(as_bytes(t)):016x}".encode())
    fp = h.hexdigest()[:40]
    _FINGERPRINTS[id(weights)] = (weakref.ref(weights), fp)
    return fp


def table_path(weights: Layer0Weights, dtype: str) -> Path:
    return table_dir() / f"{fingerprint(weights)}-{dtype}{SUFFIX}"


def _shapes(weights: Layer0Weights) -> tuple[list[int], list[int]]:
    cfg = weights.config
    return [cfg.vocab_rows, cfg.num_heads, cfg.head_dim], [cfg.vocab_rows, cfg.num_kv_heads, cfg.head_dim]


def read_header(path: Path) -> tuple[dict, int]:
    """(header, payload offset); raises ValueError on a malformed header."""
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 16 or head[:8] != MAGIC:
            raise ValueError("not an l0score table file (bad magic)")
        (n,) = struct.unpack("<Q", head[8:])
        if n > 1 << 20:
            raise ValueError("header length is implausible")
        raw = f.read(n)
    if len(raw) != n:
        raise ValueError("truncated header")
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable header ({exc})") from None
    return header, -(-(16 + n) // ALIGN) * ALIGN


def load(weights: Layer0Weights, dtype: str, path: Path | None = None) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
    """(q, k) from the cache file, or (None, reason) when it is missing or fails any check."""
    path = table_path(weights, dtype) if path is None else path
    if not path.is_file():
        return None, "no cached table"
    q_shape, k_shape = _shapes(weights)
    try:
        header, offset = read_header(path)
        want = {"version": FORMAT_VERSION, "fingerprint": fingerprint(weights), "dtype": dtype,
                "q_shape": q_shape, "k_shape": k_shape}
        for key, value in want.items():
            if header.get(key) != value:
                return None, f"stale: {key} is {header.get(key)!r}, expected {value!r}"
        q, k = empty_table(q_shape, k_shape, dtype)
        qb, kb = as_bytes(q), as_bytes(k)
        size = path.stat().st_size
        if size != offset + qb.nbytes + kb.nbytes:
            return None, f"truncated or oversized: {size} bytes, expected {offset + qb.nbytes + kb.nbytes}"
        if not _read_parallel(path, [(qb, offset), (kb, offset + qb.nbytes)]):
            return None, "truncated while reading"
        for name, buf in (("q", qb), ("k", kb)):
            if f"{_native.checksum(buf):016x}" != header.get(f"{name}_checksum"):
                return None, f"corrupt: {name} table checksum mismatch"
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {exc}"
    return (q, k), ""


def empty_table(q_shape, k_shape, dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised q/k tables, backed by transparent huge pages where the kernel allows (the
    scorer's random row gathers then miss the TLB far less)."""
    q = torch.empty(q_shape, dtype=DTYPES[dtype])
    k = torch.empty(k_shape, dtype=DTYPES[dtype])
    for t in (q, k):
        _native.advise_hugepages(as_bytes(t))
    return q, k


def _read_parallel(path: Path, targets: list[tuple[np.ndarray, int]], chunk: int = 32 << 20, threads: int = 8) -> bool:
    """Fill each uint8 buffer from its file offset with several concurrent preads (a virtual disk
    delivers about twice the single-stream rate at queue depth 8)."""
    from concurrent.futures import ThreadPoolExecutor

    fd = os.open(path, os.O_RDONLY)
    try:
        jobs = [(buf, off, start) for buf, off in targets for start in range(0, buf.nbytes, chunk)]

        def read(job) -> bool:
            buf, off, start = job
            view = memoryview(buf)[start : start + chunk]
            done = 0
            while done < len(view):
                got = os.preadv(fd, [view[done:]], off + start + done)
                if got <= 0:
                    return False
                done += got
            return True

        with ThreadPoolExecutor(threads) as pool:
            return all(pool.map(read, jobs))
    finally:
        os.close(fd)


def save(weights: Layer0Weights, dtype: str, q: torch.Tensor, k: torch.Tensor, path: Path | None = None) -> Path | None:
    """Write atomically; on failure (read-only or full disk) warn and return None."""
    path = table_path(weights, dtype) if path is None else path
    qb, kb = as_bytes(q), as_bytes(k)
    header = {"version": FORMAT_VERSION, "fingerprint": fingerprint(weights), "dtype": dtype,
              "q_shape": list(q.shape), "k_shape": list(k.shape),
              "q_checksum": f"{_native.checksum(qb):016x}", "k_checksum": f"{_native.checksum(kb):016x}",
              "source": str(weights.path), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    raw = json.dumps(header, sort_keys=True).encode()
    offset = -(-(16 + len(raw)) // ALIGN) * ALIGN
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(raw)) + raw)
            f.write(b"\0" * (offset - 16 - len(raw)))
            for buf in (qb, kb):
                f.write(memoryview(buf))
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write the token table cache {path}: {exc}", CacheWarning, stacklevel=3)
        tmp.unlink(missing_ok=True)
        return None
    _drop_stale(path, header)
    return path


def _drop_stale(keep: Path, header: dict) -> None:
    """Remove older tables of the same model directory and dtype (their weights have changed)."""
    for other in keep.parent.glob(f"*-{header['dtype']}{SUFFIX}"):
        if other == keep:
            continue
        try:
            h, _ = read_header(other)
        except (OSError, ValueError):
            continue
        if h.get("source") == header["source"] and h.get("fingerprint") != header["fingerprint"]:
            other.unlink(missing_ok=True)


def load_or_build(weights: Layer0Weights, dtype: str, build: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                  use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor, CacheInfo]:
    """The cached table if it passes every check, else build() and store it for the next run."""
    if dtype not in DTYPES:
        raise ValueError(f"table dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    start = time.perf_counter()
    reason = "cache disabled"
    path = None
    if use_cache:
        path = table_path(weights, dtype)
        tables, reason = load(weights, dtype, path)
        if tables is not None:
            return (*tables, CacheInfo(path, "cache", time.perf_counter() - start))
        if reason != "no cached table":
            warnings.warn(f"token table cache {path} rejected ({reason}); rebuilding", CacheWarning, stacklevel=3)
    q, k = build()
    if use_cache:
        path = save(weights, dtype, q, k, path)
    return q, k, CacheInfo(path, "built", time.perf_counter() - start, reason)


def clear() -> int:
    """Delete every cached table; returns how many files were removed."""
    n = 0
    for f in table_dir().glob(f"*{SUFFIX}*"):
        f.unlink(missing_ok=True)
        n += 1
    return n
