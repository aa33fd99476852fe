"""Triton kernels of l0score (installed as l0score.kernels)."""
