"""`Scores`: the metrics of docs/metrics.md for a batch of candidates (defined in core/types.py)."""
from .types import METRICS, Scores, merge_rows

__all__ = ["METRICS", "Scores", "merge_rows"]
