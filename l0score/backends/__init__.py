"""Scoring backends behind the Scorer: native C++, Triton, token tables and their on-disk cache."""
