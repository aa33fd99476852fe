#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

namespace l0score {

using F32In = pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast>;

// Weights [N, K] (nn.Linear layout: q_proj rows then k_proj rows) -> panels [ceil(N/32), K, 32].
pybind11::array_t<float> pack_weights(F32In w);

// Token-table rows row0..row0+n-1 from embedding rows x [n, K] (float32):
// RMSNorm (norm, eps) -> x @ W^T + bias, columns < q_cols into out_q, the rest into out_k
// (float32 or bfloat16 bits as int16, rounded to nearest even).
void build_rows(F32In x, F32In norm, double eps, F32In packed, F32In bias, int64_t n_cols, int64_t q_cols,
                pybind11::array out_q, pybind11::array out_k, int64_t row0);

// Ask the kernel for transparent huge pages over a large buffer (before it is first written):
// token-table gathers touch 4 pages per row otherwise. Returns whether madvise succeeded.
bool advise_hugepages(pybind11::buffer data);

// 64-bit content hash of a buffer (any dtype, C-contiguous): deterministic for any thread count.
uint64_t checksum(pybind11::buffer data);

}  // namespace l0score
