"""The tiny demo pair that commands use when no --base/--dormant is given."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..core.cache_dir import cache_dir


def demo_pair(seed: int = 0) -> Path:
    """The tiny demo pair under the cache directory, made on first use (atomically, so an
    interrupted build is redone rather than trusted)."""
    from . import make_pair

    final = cache_dir() / f"demo-pair-tiny-seed{seed}"
    if (final / "trigger.json").is_file():
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_pair(tmp, size="tiny", seed=seed)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
