"""Synthetic pairs under the cache directory, made on first use: the tiny demo pair that commands use
when no --base/--dormant is given, and the pairs of a size that the benchmarks use."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.cache_dir import build_once, cache_dir


def demo_pair(seed: int = 0) -> Path:
    """The tiny demo pair under the cache directory, made on first use (atomically, so an
    interrupted build is redone rather than trusted)."""
    from . import make_pair

    return build_once(cache_dir() / f"demo-pair-tiny-seed{seed}", "trigger.json",
                      lambda tmp: make_pair(tmp, size="tiny", seed=seed))


def pair_is_complete(pair_dir: Path) -> bool:
    """Both model directories hold a config, an index and every shard it lists, plus trigger.json."""
    pair_dir = Path(pair_dir)
    if not (pair_dir / "trigger.json").is_file():
        return False
    for role in ("base", "dormant"):
        d = pair_dir / role
        if not (d / "config.json").is_file():
            return False
        index = d / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (ValueError, KeyError):
                return False
            if not all((d / s).is_file() and (d / s).stat().st_size > 0 for s in shards):
                return False
        elif not (d / "model.safetensors").is_file():
            return False
    return True


def default_pair(size: str = "qwen2-7b-l0", seed: int = 0, say=None) -> Path:
    """The synthetic pair of that size under the cache directory, made on first use (`say(text)`
    is told when it is being made, which takes minutes at 7B shape)."""
    out = cache_dir() / "pairs" / f"{size}-seed{seed}"
    if not pair_is_complete(out):
        from . import make_pair

        if say is not None:
            say(f"making the synthetic {size} pair under {out} (once)")
        make_pair(out, size=size, seed=seed)
    return out
