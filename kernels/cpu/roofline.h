// The machine's measured ceiling for the roofline in `l0score bench`.
#pragma once

namespace l0score {

// GFLOP/s of a pure fused-multiply-add stream on `threads` OpenMP threads (0: all), `iterations`
// loop trips per thread: independent accumulators in the host's widest vectors, no memory traffic.
double fma_peak(long long iterations, int threads);

}  // namespace l0score
