"""The machine's ceilings (l0score.machine, kernels/cpu/roofline.cpp) against what the OS reports."""
from pathlib import Path

import pytest

from l0score import _native
from l0score.machine import fma_peak, sgemm_rate, theoretical_peak


def test_theoretical_peak_follows_the_cpu_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    th = theoretical_peak()
    want_bits = 512 if "avx512f" in flags else 256 if "avx2" in flags or "avx" in flags else 128
    assert th["vector_bits"] == want_bits
    assert th["flop_per_cycle_per_core"] == 2 * th["fma_pipes"] * min(th["vector_bits"], th["fma_pipe_bits"]) // 32
    assert th["gflops"] == pytest.approx(th["cores"] * th["clock_ghz"] * th["flop_per_cycle_per_core"])
    assert th["clock_ghz"] > 0.1 and th["cores"] >= 1


def test_fma_micro_kernel_and_sgemm_measure_something():
    one = fma_peak(seconds=0.02, threads=1)
    assert 0.1 < one < 1e4  # GFLOP/s of one core: finite, positive, not absurd
    assert sgemm_rate(256, reps=1) > 0
    with pytest.raises(ValueError):
        _native.fma_peak(0, 1)
    with pytest.raises(ValueError):
        _native.fma_peak(10, -1)
