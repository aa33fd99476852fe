"""The user cache directory: demo pair, token tables. Override with L0SCORE_CACHE."""
import os
import shutil
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    root = os.environ.get("L0SCORE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "l0score"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_once(final: Path, marker: str, build: Callable[[Path], object]) -> Path:
    """A cached directory made on first use, atomically: `build(tmp)` writes a temporary sibling that
    is renamed to `final` only when complete, so an interrupted build is redone rather than trusted.
    `marker` is the file whose presence means complete; when two processes race, the first rename wins."""
    final = Path(final)
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        if not (final / marker).is_file():  # another process may have finished first
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
