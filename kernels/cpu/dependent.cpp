// Fused scorer whose every dependent row is read from the table: reference.score_rows semantics
// with q/k = table[ids[b, t]] for all rows t < dep_len[b], candidate and suffix alike.
//
// score_table (score.cpp) shares the suffix rows of all candidates of one length, which holds at
// layer 0 (a suffix token's q/k is its table row). At layer L (the first-module scorer) a suffix
// row's q/k depend on the candidate before it, so every row is its own: the caller projects the
// trunk's states of each (candidate, position) into a per-batch table and ids index it. Same
// micro-kernel and reductions (rows.h); for region "candidate" a suffix row scores only its cells
// against the candidate's keys (and the cached keys from cand_start), as build_suffix_cache does.
#include "score.h"

#include "rows.h"

namespace py = pybind11;

namespace l0score {
namespace {

using namespace rows;

// The key positions of row t (absolute position p + t) and which of them the max-type metrics see.
inline int row_ranges(int p, int t, int c, int cand_start, bool region_all, Range* out) {
  if (t < c || region_all) {
    out[0] = {0, p + t + 1, 0};
    return 1;
  }
  out[0] = {0, p, cand_start};
  out[1] = {p, p + c, 0};
  out[2] = {p + c, p + t + 1, INT_MAX};
  return 3;
}

template <typename T>
void score_rows_of(const Problem<T>& P, const int64_t* ids, int c, int d, RowScratch& ws, float* out_max,
                   int64_t* out_pos, float* out_kl, float* out_band) {
  const int D = int(P.D), Hs = P.Hs, ng = int(P.groups.size()), p = P.p;
  const int dpad = ceil_to(d, NARROW);
  float* K = ws.k.get(size_t(2) * ng * D * dpad);  // [2][ng][D][dpad]: every dependent key, rotated
  float* tmp = ws.tmp.get(size_t(dpad) * D);
  for (int m = 0; m < 2; ++m)
    for (int gi = 0; gi < ng; ++gi)
      key_tile(P, m, P.groups[gi].g, ids, d, dpad, p, tmp, K + (size_t(m) * ng + gi) * D * dpad);
  float* qb = ws.q.get(size_t(2) * P.gmax * D);
  float* qd = qb + size_t(P.gmax) * D;
  const int sstride = p + dpad + LANES;
  float* Sb = ws.sb.get_clean(size_t(P.gmax) * sstride);
  float* Sd = ws.sd.get_clean(size_t(P.gmax) * sstride);
  ws.vecs.resize(P.ppad / NARROW + dpad / NARROW + 1);
  ws.st.resize(P.gmax);
  ws.best.assign(Hs, BEST_EMPTY);
  ws.kl.assign(Hs, KlAcc());
  std::fill_n(out_band, P.n_off, 0.f);
  KeyVec* vecs = ws.vecs.data();
  for (int t = 0; t < d; ++t) {
    const int64_t pos = p + t;
    Range ranges[3];
    const int nr = row_ranges(p, t, c, P.cand_start, P.region_all, ranges);
    for (int gi = 0; gi < ng; ++gi) {
      const Group& gr = P.groups[gi];
      const int nv = P.row_inputs(gi, ids[t], pos, t, K, ng, dpad, qb, qd, vecs);
      row_logits(qb, qd, gr.nh, D, vecs, nv, P.scale, Sb, Sd, sstride);
      std::fill_n(ws.st.data(), gr.nh, SOFT_EMPTY);
      reduce_row(Sb, Sd, sstride, gr.nh, ranges, nr, pos, P.rb_group(gr), P.rbstride, P.M, ws.st.data(),
                 ws.best.data() + gr.h0, out_band, P.offsets, P.n_off);
      for (int h = 0; h < gr.nh; ++h) ws.kl[gr.h0 + h].add(ws.st[h]);
    }
  }
  for (int hs = 0; hs < Hs; ++hs) {
    out_max[hs] = ws.best[hs].v;
    out_pos[2 * hs] = ws.best[hs].i;
    out_pos[2 * hs + 1] = ws.best[hs].j;
    out_kl[hs] = float(std::max(0.0, ws.kl[hs].value()));
  }
}

// The longest dependent row count, after checking lengths and ids against the table.
int64_t check_rows(const I64Array& ids, const I64Array& cand_len, const I64Array& dep_len, int64_t V) {
  if (ids.ndim() != 2) throw py::value_error("ids must be [batch, width]");
  const int64_t B = ids.shape(0), W = ids.shape(1);
  if (cand_len.size() != B || dep_len.size() != B) throw py::value_error("cand_len/dep_len must have one entry per row");
  int64_t max_dep = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t c = cand_len.data()[b], d = dep_len.data()[b];
    if (c < 1 || d < c || d > W) throw py::value_error("row " + std::to_string(b) + ": bad candidate/dependent length");
    for (int64_t t = 0; t < d; ++t) {
      const int64_t v = ids.data()[b * W + t];
      if (v < 0 || v >= V)
        throw py::value_error("row " + std::to_string(b) + ", position " + std::to_string(t) + ": id " +
                              std::to_string(v) + " outside [0, " + std::to_string(V) + ")");
    }
    max_dep = std::max(max_dep, d);
  }
  return max_dep;
}

}  // namespace

py::tuple score_dependent(py::array q_base, py::array k_base, py::array q_dorm, py::array k_dorm, int64_t num_heads,
                          int64_t num_kv_heads, int64_t head_dim, I64Array ids, I64Array cand_len, I64Array dep_len,
                          I64Array heads, F32Array prefix_keys, int64_t prefix_len, int64_t cand_start, F32Array cos,
                          F32Array sin, F32Array rev_baseline, I64Array offsets, bool region_all) {
  const Tables tabs = check_tables(q_base, k_base, q_dorm, k_dorm, num_heads, num_kv_heads, head_dim);
  const int64_t max_dep = check_rows(ids, cand_len, dep_len, tabs.V);
  const int64_t B = ids.shape(0), W = ids.shape(1), Hs = heads.size(), n_off = offsets.size();
  const int64_t *idp = ids.data(), *cl = cand_len.data(), *dl = dep_len.data();
  RowOutputs out(B, Hs, n_off);
  with_problem(tabs, num_heads, num_kv_heads, head_dim, heads, prefix_keys, prefix_len, cand_start, cos, sin,
               rev_baseline, offsets, region_all, max_dep, [&](const auto& P) {
#pragma omp parallel
                 {
                   RowScratch ws;
#pragma omp for schedule(dynamic, 1)
                   for (int64_t b = 0; b < B; ++b)
                     score_rows_of(P, idp + b * W, int(cl[b]), int(dl[b]), ws, out.max + b * Hs,
                                   out.pos + b * Hs * 2, out.kl + b * Hs, out.bnd + b * n_off);
                 }
               });
  return out.tuple();
}

}  // namespace l0score
