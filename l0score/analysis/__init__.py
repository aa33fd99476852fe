"""Weight-diff analysis of the two checkpoints (focus heads, seed tokens)."""
