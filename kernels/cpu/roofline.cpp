// FMA-bound micro-kernel: the floating-point ceiling of this CPU as the kernels see it.
//
// Each thread runs ACC independent chains acc = acc * a + b on v16f vectors (simd.h: one zmm with
// AVX-512, two ymm with AVX2), so the loop is bound by FMA throughput, not latency: keeping every
// FMA pipe busy needs latency x pipes independent registers (4 cycles x 2 pipes = 8 on current
// x86), and ACC covers that while leaving the register file room for the two constants. Nothing
// touches memory inside the loop. -ffp-contract=fast (CMakeLists.txt) turns a * x + b into one FMA.
#include "roofline.h"

#include <omp.h>

#include <stdexcept>

#include "simd.h"

namespace l0score {

namespace {

#if defined(__AVX512F__)
constexpr int ACC = 12;  // 12 zmm of 32
#else
constexpr int ACC = 6;   // 6 v16f = 12 ymm of 16 (AVX2) or 24 xmm halves' worth of work (SSE, spills)
#endif

float fma_chains(long long iterations, float seed) {
  v16f acc[ACC];
  for (int i = 0; i < ACC; ++i) acc[i] = vsplat(seed + 0.001f * i);
  const v16f a = vsplat(0.999999f), b = vsplat(1e-7f);  // a fixed point near 0.1: no overflow, no denormals
  for (long long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < ACC; ++i) acc[i] = acc[i] * a + b;
  }
  v16f sum = acc[0];
  for (int i = 1; i < ACC; ++i) sum += acc[i];
  return hsum(sum);  // used by the caller, so the chains cannot be optimised away
}

}  // namespace

double fma_peak(long long iterations, int threads) {
  if (iterations < 1) throw std::invalid_argument("fma_peak: iterations must be >= 1");
  if (threads < 0) throw std::invalid_argument("fma_peak: threads must be >= 0");
  const int n = threads > 0 ? threads : omp_get_max_threads();
  volatile float sink = 0.f;
  fma_chains(iterations / 10 + 1, 0.1f);  // warm-up: clocks up, code in cache
  double seconds = 0.0;
#pragma omp parallel num_threads(n)
  {
    fma_chains(iterations / 10 + 1, 0.2f);
#pragma omp barrier
    const double t0 = omp_get_wtime();
    const float r = fma_chains(iterations, 0.1f + 0.01f * omp_get_thread_num());
#pragma omp barrier
    const double t1 = omp_get_wtime();
#pragma omp critical
    {
      sink = sink + r;
      if (t1 - t0 > seconds) seconds = t1 - t0;
    }
  }
  (void)sink;
  const double flops = 2.0 * LANES * ACC * double(iterations) * n;
  return flops / seconds / 1e9;
}

}  // namespace l0score
