// Token-table build: RMSNorm + Q/K projection of every embedding row, as a blocked GEMM.
//
// C[n, N] = norm(x)[n, K] @ W^T[K, N] + bias. W is packed once into column panels of NR = 32
// ([K][32] each, contiguous); rows are processed in blocks of MC, normalised while being packed
// into micro-panels of MR = 6 ([K][6]). For each block, each W panel is loaded once and reused
// by every micro-panel of the block from L2; the 6 x 32 accumulator tile stays in registers.
// The norm and the sums are taken in double and each table value is rounded to float once: a
// float accumulator over the hidden size made the table's q/k rows the largest error of the scores
// (native head_kl 1.05e-4 from float64, against 2.7e-5 with torch's projection; docs/precision.md).
// The build runs once per model and is cached, so the slower double FMAs cost little.
#include "table_build.h"

#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "simd.h"

namespace py = pybind11;

namespace l0score {
namespace {

constexpr int NR = 32;  // columns per W panel (2 vectors)
constexpr int MR = 6;  // rows per micro-panel (6 x 4 double vectors: 24 accumulator registers)
constexpr int MC = 32 * MR;  // rows per block

typedef double v8d __attribute__((vector_size(64)));

void micro_6x32(const float* __restrict a, const float* __restrict b, int64_t K, double* __restrict c) {
  v8d acc[MR][4];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = v8d{};
  for (int64_t k = 0; k < K; ++k) {
    v8d bk[4];
    for (int q = 0; q < 4; ++q) bk[q] = __builtin_convertvector(vload8(b + k * NR + 8 * q), v8d);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const double x = a[k * MR + r];
      for (int q = 0; q < 4; ++q) acc[r][q] += x * bk[q];
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < 4; ++q) *reinterpret_cast<v8d*>(c + r * NR + 8 * q) = acc[r][q];
}

struct Out {
  char* ptr;
  bool bf16;
  int64_t cols;
  void put(int64_t row, int64_t col, float v) const {
    if (bf16)
      reinterpret_cast<uint16_t*>(ptr)[row * cols + col] = f32_to_bf16(v);
    else
      reinterpret_cast<float*>(ptr)[row * cols + col] = v;
  }
};

Out out_view(py::array& a, const char* name, int64_t cols) {
  if (a.ndim() != 2 || a.shape(1) != cols)
    throw py::value_error(std::string(name) + ": expected [rows, " + std::to_string(cols) + "]");
  if (!(a.flags() & py::array::c_style) || !a.writeable())
    throw py::value_error(std::string(name) + ": must be a writeable C-contiguous array");
  const char kind = a.dtype().kind();
  if (kind == 'f' && a.itemsize() == 4) return {static_cast<char*>(a.mutable_data()), false, cols};
  if ((kind == 'i' || kind == 'u') && a.itemsize() == 2) return {static_cast<char*>(a.mutable_data()), true, cols};
  throw py::type_error(std::string(name) + ": must be float32 or bfloat16 bits (int16)");
}

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
constexpr uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full, P3 = 0x165667B19E3779F9ull;

inline uint64_t avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

// xxHash64-style: 8 independent lanes over 64-byte stripes, then the tail byte by byte.
uint64_t hash_chunk(const unsigned char* p, size_t n, uint64_t seed) {
  uint64_t acc[8];
  for (int l = 0; l < 8; ++l) acc[l] = seed + P1 * uint64_t(l + 1);
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    uint64_t w[8];
    std::memcpy(w, p + i, 64);
    for (int l = 0; l < 8; ++l) acc[l] = rotl(acc[l] + w[l] * P2, 31) * P1;
  }
  uint64_t h = n * P3;
  for (int l = 0; l < 8; ++l) h = rotl(h ^ avalanche(acc[l]), 27) * P1 + P2;
  for (; i < n; ++i) h = rotl(h ^ (uint64_t(p[i]) * P3), 11) * P1;
  return avalanche(h);
}

}  // namespace

py::array_t<float> pack_weights(F32In w) {
  if (w.ndim() != 2) throw py::value_error("weights must be 2-D [N, K]");
  const int64_t N = w.shape(0), K = w.shape(1), np_ = (N + NR - 1) / NR;
  py::array_t<float> out({np_, K, int64_t(NR)});
  const float* src = w.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < np_; ++j)
      for (int64_t k = 0; k < K; ++k)
        for (int l = 0; l < NR; ++l) {
          const int64_t n = j * NR + l;
          dst[(j * K + k) * NR + l] = n < N ? src[n * K + k] : 0.f;
        }
  }
  return out;
}

void build_rows(F32In x, F32In norm, double eps, F32In packed, F32In bias, int64_t n_cols, int64_t q_cols,
                py::array out_q, py::array out_k, int64_t row0) {
  if (x.ndim() != 2) throw py::value_error("x must be [rows, hidden]");
  const int64_t n = x.shape(0), K = x.shape(1), N = n_cols, np_ = (N + NR - 1) / NR;
  if (norm.size() != K || bias.size() != N || q_cols < 0 || q_cols > N)
    throw py::value_error("norm/bias/q_cols do not match the weights");
  if (packed.ndim() != 3 || packed.shape(0) != np_ || packed.shape(1) != K || packed.shape(2) != NR)
    throw py::value_error("packed weights do not match [ceil(N/32), hidden, 32]");
  const Out oq = out_view(out_q, "out_q", q_cols), ok = out_view(out_k, "out_k", N - q_cols);
  if (out_q.shape(0) != out_k.shape(0) || row0 < 0 || row0 + n > out_q.shape(0))
    throw py::value_error("rows outside the output tables");
  const float* xp = x.data();
  const float* wn = norm.data();
  const float* bp = packed.data();
  const float* bi = bias.data();
  py::gil_scoped_release release;
  const int64_t nblocks = (n + MC - 1) / MC;
#pragma omp parallel
  {
    AlignedBuf abuf;
    float* A = abuf.get(size_t(MC) * K);
    alignas(64) double C[MR * NR];
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t r0 = blk * MC, rows = std::min<int64_t>(MC, n - r0);
      const int npanels = int((rows + MR - 1) / MR);
      // Normalise and pack: A[panel][k][r], zero rows past the end.
      std::fill_n(A, size_t(npanels) * MR * K, 0.f);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = xp + (r0 + r) * K;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int64_t k = 0; k < K; ++k) ss += double(xr[k]) * xr[k];
        const double inv = 1.0 / std::sqrt(ss / double(K) + eps);
        float* a = A + size_t(r / MR) * MR * K + (r % MR);
        for (int64_t k = 0; k < K; ++k) a[k * MR] = float(double(wn[k]) * (xr[k] * inv));
      }
      for (int64_t j = 0; j < np_; ++j) {
        const float* bpanel = bp + j * K * NR;
        for (int ip = 0; ip < npanels; ++ip) {
          micro_6x32(A + size_t(ip) * MR * K, bpanel, K, C);
          for (int r = 0; r < MR; ++r) {
            const int64_t row = r0 + ip * MR + r;
            if (row >= n) break;
            for (int l = 0; l < NR; ++l) {
              const int64_t col = j * NR + l;
              if (col >= N) break;
              const float v = float(C[r * NR + l] + bi[col]);
              if (col < q_cols)
                oq.put(row0 + row, col, v);
              else
                ok.put(row0 + row, col - q_cols, v);
            }
          }
        }
      }
    }
  }
}

bool advise_hugepages(py::buffer data) {
  py::buffer_info info = data.request(true);
  const uintptr_t start = reinterpret_cast<uintptr_t>(info.ptr);
  const uintptr_t end = start + uintptr_t(info.size) * uintptr_t(info.itemsize);
  constexpr uintptr_t HUGE = uintptr_t(1) << 21;
  const uintptr_t lo = (start + HUGE - 1) & ~(HUGE - 1), hi = end & ~(HUGE - 1);
  if (hi <= lo) return false;
#ifdef MADV_HUGEPAGE
  return madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE) == 0;
#else
  return false;
#endif
}

uint64_t checksum(py::buffer data) {
  py::buffer_info info = data.request();
  if (!info.strides.empty()) {
    py::ssize_t expect = info.itemsize;
    for (int d = int(info.ndim) - 1; d >= 0; --d) {
      if (info.shape[d] > 1 && info.strides[d] != expect) throw py::value_error("checksum needs a C-contiguous buffer");
      expect *= info.shape[d];
    }
  }
  const size_t nbytes = size_t(info.size) * size_t(info.itemsize);
  const unsigned char* p = static_cast<const unsigned char*>(info.ptr);
  constexpr size_t CHUNK = size_t(1) << 22;
  const int64_t nchunks = int64_t((nbytes + CHUNK - 1) / CHUNK);
  std::vector<uint64_t> part(nchunks);
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < nchunks; ++c) {
      const size_t off = size_t(c) * CHUNK;
      part[c] = hash_chunk(p + off, std::min(CHUNK, nbytes - off), uint64_t(c));
    }
  }
  uint64_t h = nbytes * P1;
  for (int64_t c = 0; c < nchunks; ++c) h = rotl(h ^ part[c], 29) * P2 + P3;
  return avalanche(h);
}

}  // namespace l0score
