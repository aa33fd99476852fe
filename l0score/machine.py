"""What this CPU can do: the floating-point ceiling `l0score bench` expresses every rate against.

Three figures, side by side:
  * theoretical peak = cores x clock x FLOP/cycle, FLOP/cycle = 2 (an FMA) x FMA pipes x lanes, from
    what the OS tells (/proc/cpuinfo flags for the widest vectors, lscpu/cpuinfo for the clock and the
    cores) and a short table of FMA pipes per microarchitecture (the OS does not report them);
  * measured FMA peak: the native micro-kernel (kernels/cpu/roofline.cpp), independent accumulators
    in the widest vectors on every thread, no memory traffic: the ceiling the kernels can reach;
  * sgemm: torch.mm of two 4096 x 4096 float32 matrices, what a tuned BLAS GEMM reaches of it.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

# (vendor, family) -> (FMA pipes per core, bits per pipe, note). Zen 2-4 run a 512-bit FMA on their
# two 256-bit pipes (one per cycle); server Intel with AVX-512 has two 512-bit FMA units on most
# Gold/Platinum parts (one on some Silver/Bronze).
FMA_PIPES = {
    ("AuthenticAMD", 23): (2, 256, "Zen/Zen 2: two FMA pipes (128-bit on Zen 1)"),
    ("AuthenticAMD", 25): (2, 256, "Zen 3/Zen 4: two 256-bit FMA pipes; AVX-512 ops take both"),
    ("AuthenticAMD", 26): (2, 512, "Zen 5: two 512-bit FMA pipes (256-bit on mobile parts)"),
    ("GenuineIntel", 6): (2, 512, "Intel core/server: two FMA units (one on some AVX-512 Silver/Bronze parts)"),
}


def _cpuinfo() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines()) if k.strip()}


def _lscpu() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def theoretical_peak() -> dict:
    """Peak float32 GFLOP/s from the OS's description of the CPU, with where each factor came from."""
    info, ls = _cpuinfo(), _lscpu()
    flags = set(info.get("flags", "").split())
    vector_bits = 512 if "avx512f" in flags else 256 if {"avx2", "avx"} & flags else 128
    fma = "fma" in flags or "avx512f" in flags
    vendor, family = info.get("vendor_id", ""), int(info.get("cpu family", "0") or 0)
    pipes, pipe_bits, note = FMA_PIPES.get((vendor, family), (2, vector_bits, "unknown CPU: two FMA pipes assumed"))
    if vendor == "AuthenticAMD" and family == 23 and int(info.get("model", "0") or 0) < 0x30:
        pipes, pipe_bits = 2, 128
    if not fma:
        pipes, note = 1, "no FMA: one multiply + one add pipe counted as one FMA"
    # a pipe narrower than the vectors takes several cycles (or both pipes) per instruction
    flop_per_cycle = 2 * pipes * min(vector_bits, pipe_bits) // 32
    if ls.get("CPU max MHz"):
        mhz, clock_source = float(ls["CPU max MHz"]), "lscpu CPU max MHz"
    else:
        mhz, clock_source = float(info.get("cpu MHz", "0") or 0), "/proc/cpuinfo cpu MHz (no max clock reported)"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads_per_core = int(ls.get("Thread(s) per core", "1") or 1)
    cores = max(1, cpus // threads_per_core)
    return {"cpu": info.get("model name", "unknown"), "vendor": vendor, "family": family,
            "vector_bits": vector_bits, "fma": fma, "fma_pipes": pipes, "fma_pipe_bits": pipe_bits,
            "fma_note": note, "flop_per_cycle_per_core": flop_per_cycle, "clock_ghz": mhz / 1e3,
            "clock_source": clock_source, "cores": cores, "threads_per_core": threads_per_core,
            "gflops": cores * mhz / 1e3 * flop_per_cycle}


def fma_peak(seconds: float = 0.3, threads: int = 0) -> float:
    """Measured FMA ceiling (GFLOP/s) of the native micro-kernel on `threads` threads (0: all)."""
    from . import _native

    iterations = 1_000_000
    t = time.perf_counter()
    _native.fma_peak(iterations, threads)
    dt = max(time.perf_counter() - t, 1e-4)
    iterations = max(iterations, int(iterations * seconds / dt))
    return max(_native.fma_peak(iterations, threads) for _ in range(3))


def sgemm_rate(n: int = 4096, reps: int = 3) -> float:
    """Best float32 torch.mm rate in GFLOP/s over reps, n x n matrices."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def ceilings(sgemm_n: int = 4096) -> dict:
    """The three figures; `peak` is the measured FMA ceiling every bench rate is a fraction of."""
    theory = theoretical_peak()
    fma = fma_peak()
    sgemm = sgemm_rate(sgemm_n)
    return {"theoretical": theory, "fma_gflops": fma, "sgemm_gflops": sgemm, "sgemm_n": sgemm_n,
            "fma_of_theoretical": fma / theory["gflops"] if theory["gflops"] else None,
            "sgemm_of_fma": sgemm / fma}
