"""The user cache directory: demo pair, token tables. Override with L0SCORE_CACHE."""
import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("L0SCORE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "l0score"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
