// Exact pair scan of one (query head, offset): the top-k cells of
//     dS(a, b) = [rot_r(q_dorm(a)) . k_dorm(b) - rot_r(q_base(a)) . k_base(b)] / sqrt(D) - shift
// over query token a and key token b of a pool (offset 0: a == b only), ranked by |dS|.
//
// It is one GEMM [N, 2D] x [2D, N] (queries: rotated dormant and negated rotated base side by side;
// keys: both models' unrotated keys), never stored: both operands are packed into panels of 16
// tokens, transposed ([2D][16]), and a 16 x 16 tile of cells is one tokens_by_keys call (rows.h:
// queries in lanes, 16 accumulators, one per key, the key value broadcast). Every tile is compared with
// the thread's current k-th best |dS|; only cells above it reach the thread's heap, which is rare
// once the heap is full. A block of query panels shares each key panel while it is in L2, so the
// key matrix streams from memory once per block, not once per panel.
#include <algorithm>
#include <cmath>
#include <queue>
#include <tuple>
#include <vector>

#include "rows.h"
#include "score.h"

namespace py = pybind11;

namespace l0score {
namespace {

using namespace rows;

constexpr int PANEL = LANES;       // tokens per panel
constexpr int QUERY_BLOCK = 8;     // query panels sharing each key panel (8 x 16 KB at D = 128)

struct Cell {
  float abs, value;
  int64_t q, k;
};
// Heap order: the weakest cell on top (smaller |dS|, then the later pair, so earlier pairs win ties).
struct Weaker {
  bool operator()(const Cell& a, const Cell& b) const {
    if (a.abs != b.abs) return a.abs > b.abs;
    return std::tie(a.q, a.k) < std::tie(b.q, b.k);
  }
};

class TopK {
 public:
  explicit TopK(int k) : k_(k) {}
  float threshold() const { return int(heap_.size()) < k_ ? -1.f : heap_.top().abs; }
  void offer(const Cell& c) {
    if (int(heap_.size()) < k_) {
      heap_.push(c);
    } else if (Weaker()(c, heap_.top())) {
      heap_.pop();
      heap_.push(c);
    }
  }
  std::vector<Cell> take() {
    std::vector<Cell> out;
    for (; !heap_.empty(); heap_.pop()) out.push_back(heap_.top());
    return out;
  }

 private:
  int k_;
  std::priority_queue<Cell, std::vector<Cell>, Weaker> heap_;
};

// Rows 0..N of width W, made by fill(n, dst), as panels [ceil(N/16)][W][16] (transposed, zero
// padded): each panel's rows are filled into a small buffer and transposed, so no [N, W] copy exists.
template <typename Fill>
std::vector<float> panels(int64_t N, int W, Fill fill) {
  const int64_t np = (N + PANEL - 1) / PANEL;
  std::vector<float> out(size_t(np) * W * PANEL, 0.f);
#pragma omp parallel
  {
    std::vector<float> rows(size_t(PANEL) * W);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < np; ++p) {
      const int n = int(std::min<int64_t>(PANEL, N - p * PANEL));
      for (int t = 0; t < n; ++t) fill(p * PANEL + t, rows.data() + size_t(t) * W);
      transpose_rows([&](int t) { return rows.data() + size_t(t) * W; }, n, PANEL, W,
                     out.data() + size_t(p) * W * PANEL);
    }
  }
  return out;
}

template <typename T>
void scan(const T* q_base, const T* k_base, const T* q_dorm, const T* k_dorm, int64_t H, int64_t KV, int64_t D,
          const int64_t* pool, int64_t N, int64_t head, int64_t offset, int top, float shift, const float* cs,
          const float* sn, std::vector<Cell>& out) {
  const int64_t g = head / (H / KV);
  const int W = int(2 * D);
  const float scale = float(1.0 / std::sqrt(double(D)));
  // Query row of pool token n: [rot_r(q_dorm) | -rot_r(q_base)]; key row: [k_dorm | k_base].
  auto fill_q = [&](int64_t n, float* q) {
    rope(q_dorm + (pool[n] * H + head) * D, cs, sn, int(D), q);
    rope(q_base + (pool[n] * H + head) * D, cs, sn, int(D), q + D);
    for (int d = 0; d < D; ++d) q[D + d] = -q[D + d];
  };
  auto fill_k = [&](int64_t n, float* k) {
    for (int d = 0; d < D; ++d) {
      k[d] = tof(k_dorm[(pool[n] * KV + g) * D + d]);
      k[D + d] = tof(k_base[(pool[n] * KV + g) * D + d]);
    }
  };
  if (offset == 0) {  // a token attends to itself: the diagonal only
    TopK t(top);
    std::vector<float> q(W), k(W);
    for (int64_t n = 0; n < N; ++n) {
      fill_q(n, q.data());
      fill_k(n, k.data());
      float s = 0.f;
      for (int d = 0; d < W; ++d) s += q[d] * k[d];
      const float v = s * scale - shift;
      t.offer({std::fabs(v), v, n, n});
    }
    out = t.take();
    return;
  }
  const std::vector<float> QP = panels(N, W, fill_q);
  const std::vector<float> KP = panels(N, W, fill_k);
  const int64_t np = (N + PANEL - 1) / PANEL;
  const v16i lanes = lane_ids();
  std::vector<std::vector<Cell>> found;
#pragma omp parallel
  {
    TopK t(top);
#pragma omp for schedule(dynamic, 1)
    for (int64_t qb0 = 0; qb0 < np; qb0 += QUERY_BLOCK) {
      const int64_t qb1 = std::min(np, qb0 + QUERY_BLOCK);
      alignas(64) float S[PANEL * PANEL];  // S[j][lane]: key j of the panel, query in lane
      for (int64_t kp = 0; kp < np; ++kp) {
        const int nk = int(std::min<int64_t>(PANEL, N - kp * PANEL));
        const float* K = KP.data() + size_t(kp) * W * PANEL;
        for (int64_t qp = qb0; qp < qb1; ++qp) {
          const int nq = int(std::min<int64_t>(PANEL, N - qp * PANEL));
          tokens_by_keys<PANEL, false>(QP.data() + size_t(qp) * W * PANEL, K, PANEL, nullptr, W, scale, S);
          const float thr = t.threshold();
          const v16i valid = lanes < nq;
          v16f v[PANEL], a[PANEL], top_a = vsplat(-1.f);
          for (int j = 0; j < nk; ++j) {
            v[j] = vload(S + j * PANEL) - shift;
            a[j] = vsel(valid, vabs(v[j]), vsplat(-1.f));
            top_a = vmax(top_a, a[j]);
          }
          if (hmax(top_a) <= thr) continue;  // the common case once the heap is full
          for (int j = 0; j < nk; ++j)
            for (int l = 0; l < nq; ++l)
              if (a[j][l] > thr) t.offer({a[j][l], v[j][l], qp * PANEL + l, kp * PANEL + j});
        }
      }
    }
#pragma omp critical
    found.push_back(t.take());
  }
  TopK all(top);
  for (const auto& f : found)
    for (const Cell& c : f) all.offer(c);
  out = all.take();
}

}  // namespace

py::tuple pair_topk_table(py::array q_base, py::array k_base, py::array q_dorm, py::array k_dorm, int64_t num_heads,
                          int64_t num_kv_heads, int64_t head_dim, I64Array pool, int64_t head, int64_t offset,
                          int64_t top, double shift, F32Array cos, F32Array sin) {
  const Tables tabs = check_tables(q_base, k_base, q_dorm, k_dorm, num_heads, num_kv_heads, head_dim);
  if (pool.ndim() != 1 || pool.size() == 0) throw py::value_error("pool must be a non-empty 1-D array");
  const int64_t N = pool.size();
  const int64_t* pp = pool.data();
  for (int64_t n = 0; n < N; ++n)
    if (pp[n] < 0 || pp[n] >= tabs.V)
      throw py::value_error("pool id " + std::to_string(pp[n]) + " outside [0, " + std::to_string(tabs.V) + ")");
  if (head < 0 || head >= num_heads) throw py::value_error("head outside [0, num_heads)");
  if (offset < 0) throw py::value_error("offset must be >= 0");
  if (top <= 0 || top > (int64_t(1) << 24)) throw py::value_error("top must be in [1, 2^24]");
  if (cos.size() != head_dim / 2 || sin.size() != head_dim / 2)
    throw py::value_error("cos/sin must hold the D/2 angles of the offset");
  std::vector<Cell> cells;
  {
    py::gil_scoped_release release;
    if (tabs.tv[0].bf16) {
      scan(static_cast<const uint16_t*>(tabs.tv[0].ptr), static_cast<const uint16_t*>(tabs.tv[1].ptr),
           static_cast<const uint16_t*>(tabs.tv[2].ptr), static_cast<const uint16_t*>(tabs.tv[3].ptr), num_heads,
           num_kv_heads, head_dim, pp, N, head, offset, int(top), float(shift), cos.data(), sin.data(), cells);
    } else {
      scan(static_cast<const float*>(tabs.tv[0].ptr), static_cast<const float*>(tabs.tv[1].ptr),
           static_cast<const float*>(tabs.tv[2].ptr), static_cast<const float*>(tabs.tv[3].ptr), num_heads,
           num_kv_heads, head_dim, pp, N, head, offset, int(top), float(shift), cos.data(), sin.data(), cells);
    }
  }
  std::reverse(cells.begin(), cells.end());  // the heap gives weakest first
  const int64_t K = int64_t(cells.size());
  py::array_t<float> values(K);
  py::array_t<int64_t> q_idx(K), k_idx(K);
  for (int64_t i = 0; i < K; ++i) {
    values.mutable_data()[i] = cells[i].value;
    q_idx.mutable_data()[i] = cells[i].q;
    k_idx.mutable_data()[i] = cells[i].k;
  }
  return py::make_tuple(values, q_idx, k_idx);
}

}  // namespace l0score
