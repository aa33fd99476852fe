"""Synthetic base/dormant Qwen2 pairs with a planted Layer-0 trigger (see pair.py for the math)."""

from .pair import SIZES, PairSpec, make_pair

__all__ = ["make_pair", "PairSpec", "SIZES"]
