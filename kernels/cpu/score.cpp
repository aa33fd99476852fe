// Fused token-table scorer: the semantics of reference.score_rows, computed per candidate.
//
// For candidate b (c tokens, then s suffix tokens), dependent row t sits at absolute position p + t.
// Keys are indexed by absolute position: 0..p-1 are the context's cached rotated keys, then the
// candidate's own keys, then the suffix keys. Per candidate and per KV group g:
//   * candidate rows t < c see prefix keys 0..p-1 and candidate keys p..p+t;
//   * suffix rows see prefix keys, all candidate keys and suffix keys up to themselves. Only the
//     cells against candidate keys change between candidates of the same length c: the rest
//     (suffix rows vs prefix and suffix keys) is reduced once per (c, s) into a partial softmax
//     state, a max and band contributions (SufCache), and merged into every candidate.
// The micro-kernel and reductions are in rows.h.
#include "score.h"

#include <map>

#include "rows.h"

namespace py = pybind11;

namespace l0score {
namespace {

using namespace rows;

struct Workspace : RowScratch {
  int sink = 0;
  // 0: no software prefetch; 1: next row's lines, one request per 128 bytes; 2: per 64 bytes;
  // 3 (default): 1 plus one load per 4 KiB page of the next candidate's rows at its start.
  int pf_mode = 3;
};

template <typename T>
void score_one(const Problem<T>& P, const int64_t* ids, int c, const int64_t* next_ids, int next_c,
               const SufCache* sc, Workspace& ws, float* out_max, int64_t* out_pos, float* out_kl, float* out_band) {
  const int D = int(P.D), Hs = P.Hs, ng = int(P.groups.size()), p = P.p;
  const int cpad = ceil_to(c, NARROW);
  const int s = sc ? sc->s : 0;

  float* K = ws.k.get(size_t(2) * ng * D * cpad);  // [2][ng][D][cpad]
  float* tmp = ws.tmp.get(size_t(cpad) * D);
  for (int m = 0; m < 2; ++m)
    for (int gi = 0; gi < ng; ++gi)
      key_tile(P, m, P.groups[gi].g, ids, c, cpad, p, tmp, K + (size_t(m) * ng + gi) * D * cpad);
  float* Q = ws.q.get(size_t(2) * P.gmax * D);  // one row's rotated queries, both models
  const int nvmax = P.ppad / NARROW + cpad / NARROW;
  const int sstride = p + cpad + LANES;
  const int srows = std::max(1, s) * P.gmax;
  float* Sb = ws.sb.get_clean(size_t(srows) * sstride);
  float* Sd = ws.sd.get_clean(size_t(srows) * sstride);
  ws.vecs.resize(nvmax);
  ws.st.resize(srows);
  ws.best.assign(Hs, BEST_EMPTY);
  ws.kl.assign(Hs, KlAcc());
  std::fill_n(out_band, P.n_off, 0.f);
  KeyVec* vecs = ws.vecs.data();
  if (ws.pf_mode >= 3 && next_ids) ws.sink += P.touch_pages(next_ids, next_c);
  float* qb = Q;
  float* qd = Q + size_t(P.gmax) * D;
  // Candidate rows (keys 0..p+t, every cell scored), token-major: each token's table rows are read
  // in one pass over all groups (one long stream per row for the hardware prefetcher).
  for (int t = 0; t < c; ++t) {
    const int64_t id = ids[t];
    if (t + 1 < c)
      P.prefetch_q(ids[t + 1], ws.pf_mode);
    else if (next_ids)
      P.prefetch_q(next_ids[0], ws.pf_mode);
    if (next_ids && t < next_c) P.prefetch_k(next_ids[t], ws.pf_mode);
    for (int gi = 0; gi < ng; ++gi) {
      const Group& gr = P.groups[gi];
      const int nv = P.row_inputs(gi, id, p + t, t, K, ng, cpad, qb, qd, vecs);
      row_logits(qb, qd, gr.nh, D, vecs, nv, P.scale, Sb, Sd, sstride);
      std::fill_n(ws.st.data(), gr.nh, SOFT_EMPTY);
      const Range range = {0, p + t + 1, 0};
      reduce_row(Sb, Sd, sstride, gr.nh, &range, 1, p + t, P.rb_group(gr), P.rbstride, P.M, ws.st.data(),
                 ws.best.data() + gr.h0, out_band, P.offsets, P.n_off);
      for (int h = 0; h < gr.nh; ++h) ws.kl[gr.h0 + h].add(ws.st[h]);
    }
  }
  // Suffix rows: only the cells against the candidate keys are new. All s x nh query rows of a
  // group go through the micro-kernel together (they share the candidate key vectors).
  for (int gi = 0; gi < ng && s; ++gi) {
    const Group& gr = P.groups[gi];
    const float* kb = K + (size_t(0) * ng + gi) * D * cpad;
    const float* kd = K + (size_t(1) * ng + gi) * D * cpad;
    int ncv = 0;
    for (int v = 0; v * NARROW < c; ++v) vecs[ncv++] = {kb + v * NARROW, kd + v * NARROW, cpad, p + v * NARROW, NARROW};
    row_logits(sc->rows(0, gr, 0, Hs, D), sc->rows(1, gr, 0, Hs, D), s * gr.nh, D, vecs, ncv, P.scale, Sb, Sd,
               sstride);
    const Range range = {p, p + c, 0};
    for (int u = 0; u < s; ++u) {
      Soft* st = ws.st.data() + size_t(u) * gr.nh;
      std::copy_n(sc->st.data() + size_t(u) * Hs + gr.h0, gr.nh, st);
      const size_t off = size_t(u) * gr.nh * sstride;
      reduce_row(Sb + off, Sd + off, sstride, gr.nh, &range, 1, p + c + u, P.rb_group(gr), P.rbstride, P.M, st,
                 ws.best.data() + gr.h0, out_band, P.offsets, P.n_off);
      for (int h = 0; h < gr.nh; ++h) ws.kl[gr.h0 + h].add(st[h]);
    }
  }
  if (sc) {
    for (int hs = 0; hs < Hs; ++hs)
      if (sc->best[hs].v > ws.best[hs].v) ws.best[hs] = sc->best[hs];
    for (int n = 0; n < P.n_off; ++n) out_band[n] = std::max(out_band[n], sc->band[n]);
  }
  for (int hs = 0; hs < Hs; ++hs) {
    out_max[hs] = ws.best[hs].v;
    out_pos[2 * hs] = ws.best[hs].i;
    out_pos[2 * hs + 1] = ws.best[hs].j;
    out_kl[hs] = float(std::max(0.0, ws.kl[hs].value()));
  }
}

template <typename T>
void run(const Problem<T>& P, const int64_t* ids, int64_t B, int64_t W, const int64_t* cand_len,
         const int64_t* dep_len, const int64_t* suffix, float* out_max, int64_t* out_pos, float* out_kl,
         float* out_band) {
  // One suffix cache per distinct (c, s).
  std::map<std::pair<int, int>, int> key_of;
  std::vector<int> cache_of(B, -1);
  for (int64_t b = 0; b < B; ++b) {
    const int c = int(cand_len[b]), s = int(dep_len[b] - cand_len[b]);
    if (s == 0) continue;
    auto it = key_of.emplace(std::make_pair(c, s), int(key_of.size())).first;
    cache_of[b] = it->second;
  }
  std::vector<SufCache> caches(key_of.size());
  for (auto& kv : key_of) caches[kv.second].c = kv.first.first, caches[kv.second].s = kv.first.second;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t n = 0; n < int64_t(caches.size()); ++n) build_suffix_cache(P, suffix, caches[n]);

  const int Hs = P.Hs, n_off = P.n_off;
  constexpr int64_t CHUNK = 16;
#pragma omp parallel
  {
    Workspace ws;
    if (const char* e = std::getenv("L0SCORE_NATIVE_PREFETCH")) ws.pf_mode = std::atoi(e);  // for measurements
#pragma omp for schedule(dynamic, 1)
    for (int64_t b0 = 0; b0 < B; b0 += CHUNK) {
      const int64_t b1 = std::min(B, b0 + CHUNK);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t nb = b + 1 < B ? b + 1 : -1;
        const SufCache* sc = cache_of[b] >= 0 ? &caches[cache_of[b]] : nullptr;
        score_one(P, ids + b * W, int(cand_len[b]), nb >= 0 ? ids + nb * W : nullptr, nb >= 0 ? int(cand_len[nb]) : 0,
                  sc, ws, out_max + b * Hs, out_pos + b * Hs * 2, out_kl + b * Hs, out_band + b * n_off);
      }
    }
  }
}

}  // namespace

py::tuple score_table(py::array q_base, py::array k_base, py::array q_dorm, py::array k_dorm,
                      int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, I64Array ids,
                      I64Array cand_len, I64Array dep_len, I64Array suffix, I64Array heads,
                      F32Array prefix_keys, int64_t prefix_len, int64_t cand_start, F32Array cos,
                      F32Array sin, F32Array rev_baseline, I64Array offsets, bool region_all) {
  const Tables tabs = check_tables(q_base, k_base, q_dorm, k_dorm, num_heads, num_kv_heads, head_dim);
  const int64_t V = tabs.V;
  if (ids.ndim() != 2) throw py::value_error("ids must be [batch, width]");
  const int64_t B = ids.shape(0), W = ids.shape(1);
  if (cand_len.size() != B || dep_len.size() != B) throw py::value_error("cand_len/dep_len must have one entry per row");
  const int64_t* idp = ids.data();
  const int64_t* cl = cand_len.data();
  const int64_t* dl = dep_len.data();
  const int64_t* suf = suffix.data();
  const int64_t n_suffix = suffix.size();
  for (int64_t u = 0; u < n_suffix; ++u)
    if (suf[u] < 0 || suf[u] >= V) throw py::value_error("suffix id " + std::to_string(suf[u]) + " outside the table");
  int64_t max_dep = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t c = cl[b], d = dl[b];
    if (c < 1 || d < c || d > W || d - c > n_suffix)
      throw py::value_error("row " + std::to_string(b) + ": bad candidate/dependent length");
    for (int64_t t = 0; t < d; ++t) {
      const int64_t v = idp[b * W + t];
      if (v < 0 || v >= V)
        throw py::value_error("candidate " + std::to_string(b) + ", token " + std::to_string(t) + ": id " +
                              std::to_string(v) + " outside [0, " + std::to_string(V) + ")");
      if (t >= c && v != suf[t - c])
        throw py::value_error("row " + std::to_string(b) + ": dependent rows after the candidate must be the suffix");
    }
    max_dep = std::max(max_dep, d);
  }
  const int64_t Hs = heads.size(), n_off = offsets.size();
  RowOutputs out(B, Hs, n_off);
  with_problem(tabs, num_heads, num_kv_heads, head_dim, heads, prefix_keys, prefix_len, cand_start, cos, sin,
               rev_baseline, offsets, region_all, max_dep,
               [&](const auto& P) { run(P, idp, B, W, cl, dl, suf, out.max, out.pos, out.kl, out.bnd); });
  return out.tuple();
}

}  // namespace l0score
