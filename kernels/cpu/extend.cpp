// Incremental extension scorer: for one cached prefix (the template prefix plus a candidate's first
// tokens: P rotated keys) the scores of prefix + [t] for every token t of a pool. Semantics are
// score.cpp's for the one-token candidates [t] in that extended context; the work per t is cut to
// what depends on t:
//   * the new row at position P: t's queries against the P cached keys and t's own key;
//   * the suffix rows at P+1..P+s: one new cell each (against t's key). Their cells against cached
//     and suffix keys are the same for every t, so they are reduced once (SufCache with c = 1).
// Tokens go in blocks of 16, one per vector lane: each head's queries and each group's keys of the
// block are transposed to [D][16] (no RoPE: see Relative), logits are 16-token vectors (one per key,
// no key padding), and the softmax, KL, max and band reductions run 16 tokens wide with no horizontal
// steps. KL is computed from dS (rows.h Soft, docs/precision.md).
#include "score.h"

#include <array>
#include <utility>

#include "rows.h"

namespace py = pybind11;

namespace l0score {
namespace {

using namespace rows;

constexpr int BLOCK = LANES;  // pool tokens per work unit, one per lane
constexpr int JMAX = 16;      // keys per tokens_by_keys call (accumulators held in registers)

using TbkFn = void (*)(const float*, const float*, int, const float*, int, float, float*);
template <int... J>
constexpr std::array<std::array<TbkFn, 2>, sizeof...(J)> tbk_table(std::integer_sequence<int, J...>) {
  return {{{(J ? &tokens_by_keys<J, false> : nullptr), &tokens_by_keys<J, true>}...}};
}
// TBK[J][SELF]
const auto TBK = tbk_table(std::make_integer_sequence<int, JMAX + 1>());

// New-row logits of one head and model for the block: S[j][lane] for keys j = 0..p (j = p: own key).
// Keys go in near-equal chunks of <= JMAX so no call is left with a short, latency-bound tail.
inline void new_row_logits(const float* QT, const float* K, int kstride, const float* KT, int p, int D, float scale,
                           float* S) {
  const int total = p + 1, nch = (total + JMAX - 1) / JMAX;
  for (int c = 0, j0 = 0; c < nch; ++c) {
    const int size = total / nch + (c < total % nch);
    const bool self = c == nch - 1;
    TBK[size - self][self](QT, K + j0, kstride, KT, D, scale, S + size_t(j0) * BLOCK);
    j0 += size;
  }
}

// Every logit of the new token t at position p is rot_a(q) . rot_b(k) = q^T R(a)^T R(b) k with a or
// b = p. Rotating the other side back by p once per call (R(p)^T applied to the cached keys and to
// the rotated suffix queries, with the same cos/sin values) leaves t's own rows unrotated: its query
// and key rows only need a transpose, and its own cell is q . k (R(p)^T R(p) = I).
struct Relative {
  std::vector<float> keys;    // [2][KV][D][ppad]: cached keys at j, rotated back by p
  std::vector<float> suffix;  // [2][s * Hs][D]: suffix queries at p+1+u, rotated back by p (SufCache layout)
  int s = 0;
  const float* suffix_rows(int m, const Group& gr, int Hs, int D) const {  // the group's s * nh rows
    return suffix.data() + (size_t(m) * s * Hs + size_t(s) * gr.h0) * D;
  }
};

inline void unrotate(float* x1, float* x2, float c, float s) {  // (x1, x2) <- R(p)^T (x1, x2)
  const float a = *x1, b = *x2;
  *x1 = a * c + b * s;
  *x2 = b * c - a * s;
}

template <typename T>
Relative relative_to(const Problem<T>& P, const SufCache& sc) {
  const int D = int(P.D), half = D / 2;
  const float *cs = P.cs(P.p), *sn = P.sn(P.p);
  Relative R;
  R.keys.assign(P.pkeys, P.pkeys + size_t(2) * P.KV * D * P.ppad);
  for (int64_t mg = 0; mg < 2 * P.KV; ++mg)
    for (int d = 0; d < half; ++d) {
      float* x1 = R.keys.data() + (size_t(mg) * D + d) * P.ppad;
      float* x2 = x1 + size_t(half) * P.ppad;
      for (int j = 0; j < P.p; ++j) unrotate(x1 + j, x2 + j, cs[d], sn[d]);
    }
  R.suffix = sc.q;
  R.s = sc.s;
  for (size_t row = 0; row < R.suffix.size() / D; ++row)
    for (int d = 0; d < half; ++d) unrotate(&R.suffix[row * D + d], &R.suffix[row * D + d + half], cs[d], sn[d]);
  return R;
}

// Running max / argmax of |dS| for one head, per lane.
struct BestVec {
  v16f v = vsplat(NEG_INF);
  v16i i = v16i{}, j = v16i{};
  void update(v16f a, int32_t row, int32_t col) {  // strict: earlier cells keep ties
    const v16i gt = a > v;
    v = vsel(gt, a, v);
    i = gt ? v16i{} + row : i;
    j = gt ? v16i{} + col : j;
  }
};

// Software prefetch of the table rows a group reads for a block (per token and model: the span of
// its scored query heads, then its key row), spread over `calls` step() calls, front to back.
template <typename T>
struct RowPrefetcher {
  const Problem<T>* P = nullptr;
  const int64_t* tok = nullptr;
  int count = 0, head0 = 0, g = 0, q_bytes = 0, k_bytes = 0, quota = 0;
  int l = 0, m = 0, off = 0;  // cursor: token, model, byte offset (query span, then key row)
  void start(const Problem<T>& prob, const int64_t* tokens, int n, const Group& gr, int calls) {
    P = &prob, tok = tokens, count = n, g = gr.g, head0 = int(prob.heads[gr.h0]);
    q_bytes = int((prob.heads[gr.h0 + gr.nh - 1] + 1 - head0) * prob.D * sizeof(T));
    k_bytes = int(prob.D * sizeof(T));
    quota = (n * 2 * (q_bytes + k_bytes) / 64 + calls - 1) / calls;
    l = m = off = 0;
  }
  void step() {
    for (int left = quota; left > 0 && l < count; --left) {
      const char* at = off < q_bytes ? reinterpret_cast<const char*>(P->qrow(m, tok[l], head0)) + off
                                     : reinterpret_cast<const char*>(P->krow(m, tok[l], g)) + (off - q_bytes);
      __builtin_prefetch(at, 0, 2);
      if ((off += 64) >= q_bytes + k_bytes) {
        off = 0;
        if (++m == 2) m = 0, ++l;
      }
    }
  }
};

// Stats of rows before the new token that are not in the context (the candidate prefix's own rows,
// scored once by the caller), or all null.
struct Earlier {
  const float* max = nullptr;  // [Hs]
  const int64_t* pos = nullptr;  // [Hs][2]
  const float *kl = nullptr, *band = nullptr;  // [Hs], [n_off]
};

struct ExtWorkspace {
  AlignedBuf kt, qt, sb, sd, ssb, ssd, band;
};

template <typename T>
void score_block(const Problem<T>& P, const int64_t* ids, int n, const int64_t* next, int n_next, const SufCache* sc,
                 const Earlier& E, const Relative& R, ExtWorkspace& ws, float* out_max, int64_t* out_pos,
                 float* out_kl, float* out_band) {
  const int D = int(P.D), Hs = P.Hs, ng = int(P.groups.size()), p = P.p, n_off = P.n_off;
  const int s = sc ? sc->s : 0;
  float* KT = ws.kt.get(size_t(2) * D * BLOCK);  // [2][D][BLOCK]: the block's keys of one group, unrotated
  float* QT = ws.qt.get(size_t(2) * D * BLOCK);  // [2][D][BLOCK]: the block's queries of one head, unrotated
  RowPrefetcher<T> pf;
  float* S[2] = {ws.sb.get(size_t(p + 1) * BLOCK), ws.sd.get(size_t(p + 1) * BLOCK)};  // [key][lane]
  v16f* band = reinterpret_cast<v16f*>(ws.band.get(size_t(std::max(1, n_off)) * BLOCK));
  for (int o = 0; o < n_off; ++o) band[o] = v16f{};
  const v16i lanes = lane_ids();

  for (int gi = 0; gi < ng; ++gi) {
    const Group& gr = P.groups[gi];
    // While this group computes, the next group's rows (or the next block's first) move into cache.
    if (gi + 1 < ng)
      pf.start(P, ids, n, P.groups[gi + 1], gr.nh);
    else
      pf.start(P, next, n_next, P.groups[0], gr.nh);
    for (int m = 0; m < 2; ++m)
      transpose_rows([&](int t) { return P.krow(m, ids[t], gr.g); }, n, BLOCK, D, KT + size_t(m) * D * BLOCK);
    // Suffix rows of this group against the block's keys: s * nh query rows, one 16-token vector.
    float* SSb = ws.ssb.get(size_t(std::max(1, s)) * gr.nh * BLOCK);
    float* SSd = ws.ssd.get(size_t(std::max(1, s)) * gr.nh * BLOCK);
    if (s) {
      const KeyVec kv = {KT, KT + size_t(D) * BLOCK, BLOCK, 0, BLOCK};
      row_logits(R.suffix_rows(0, gr, Hs, D), R.suffix_rows(1, gr, Hs, D), s * gr.nh, D, &kv, 1, P.scale, SSb, SSd,
                 BLOCK);
    }
    for (int h = 0; h < gr.nh; ++h) {
      const int hs = gr.h0 + h;
      pf.step();
      if (h + 1 < gr.nh)  // the next head's rows (in L2 by now) into L1 while this one computes
        for (int l = 0; l < n; ++l)
          for (int m = 0; m < 2; ++m) {
            const char* r = reinterpret_cast<const char*>(P.qrow(m, ids[l], P.heads[hs + 1]));
            for (int b = 0; b < D * int(sizeof(T)); b += 64) __builtin_prefetch(r + b, 0, 3);
          }
      for (int m = 0; m < 2; ++m) {
        transpose_rows([&](int t) { return P.qrow(m, ids[t], P.heads[hs]); }, n, BLOCK, D, QT + size_t(m) * D * BLOCK);
        const float* K = R.keys.data() + size_t(m * P.KV + gr.g) * D * P.ppad;
        new_row_logits(QT + size_t(m) * D * BLOCK, K, P.ppad, KT + size_t(m) * D * BLOCK, p, D, P.scale, S[m]);
      }
      const float* rb = P.rb ? P.rb + size_t(hs) * P.rbstride + P.M : nullptr;  // rb[-r] = baseline(r)
      // New row: max, argmax and band of |dS| (every cell is a candidate cell), then softmax.
      BestVec best;
      v16f md = vsplat(NEG_INF), mb = vsplat(NEG_INF);
      for (int j = 0; j <= p; ++j) {
        const v16f b = vload(S[0] + size_t(j) * BLOCK), d = vload(S[1] + size_t(j) * BLOCK);
        md = vmax(md, d), mb = vmax(mb, b);
        best.update(vabs(d - b - (rb ? rb[-(p - j)] : 0.f)), p, j);
      }
      for (int o = 0; o < n_off; ++o) {
        const int64_t j = p - P.offsets[o];
        if (j < 0) continue;
        const v16f b = vload(S[0] + size_t(j) * BLOCK), d = vload(S[1] + size_t(j) * BLOCK);
        band[o] = vmax(band[o], vabs(d - b - (rb ? rb[-(p - j)] : 0.f)));
      }
      // KL from dS (rows.h Soft): shift c = md - mb, x = dS - c; row KL = F/zd + g(F/zd - a/zd).
      const v16f c = md - mb;
      v16f zd = v16f{}, a = v16f{}, f = v16f{};
      for (int j = 0; j <= p; ++j) {
        const v16f b = vload(S[0] + size_t(j) * BLOCK), d = vload(S[1] + size_t(j) * BLOCK);
        const v16f ed = vexp(d - md), x = (d - b) - c;
        zd += ed, a += ed * x, f += kl_term(x, ed, vexp(b - mb));
      }
      v16f kl;
      {
        const v16f r = vsplat(1.f) / zd, fm = f * r;
        kl = fm + vlog1p_minus(fm - a * r);
      }
      // Suffix rows: the one new cell (row p+1+u, key p, offset u+1) folded into each row's cached state.
      for (int u = 0; u < s; ++u) {
        const v16f b = vload(SSb + size_t(u * gr.nh + h) * BLOCK), d = vload(SSd + size_t(u * gr.nh + h) * BLOCK);
        const Soft& st = sc->st[size_t(u) * Hs + hs];
        // One exp per model: of the cached max and the new logit, the larger gets factor 1 and the
        // other exp(-|difference|).
        const v16f xd = d - st.md, xb = b - st.mb;
        const v16f e_d = vexp(-vabs(xd)), e_b = vexp(-vabs(xb));
        const v16i up_d = xd > 0.f, up_b = xb > 0.f;
        const v16f one = vsplat(1.f);
        const v16f ad = vsel(up_d, e_d, one), ed = vsel(up_d, one, e_d);
        const v16f ab = vsel(up_b, e_b, one), eb = vsel(up_b, one, e_b);
        // Merge (rows.h soft_merge): the cached cells' x move by delta = c_new - c_old.
        const v16f cn = vmax(vsplat(st.md), d) - vmax(vsplat(st.mb), b);
        const v16f delta = cn - (st.md - st.mb);
        const v16i small = vabs(delta) < KL_SMALL;
        const v16f ds = vsel(small, delta, v16f{});
        const v16f em = vsel(small, ad * expm1_small(ds), ab - ad);           // ad expm1(delta)
        const v16f efm = vsel(small, ad * kl_f_small(-ds), em - ad * delta);  // ad f(-delta)
        const v16f x = (d - b) - cn;
        const v16f zn = ad * st.zd + ed;
        const v16f an = ad * (st.a - delta * st.zd) + ed * x;
        const v16f fn = ad * st.f + efm * st.zd + em * (st.f - st.a) + kl_term(x, ed, eb);
        const v16f r = one / zn, fm = fn * r;
        kl += fm + vlog1p_minus(fm - an * r);
        const v16f diff = vabs(d - b - (rb ? rb[-(u + 1)] : 0.f));
        best.update(diff, p + 1 + u, p);
        for (int o = 0; o < n_off; ++o)
          if (P.offsets[o] == u + 1) band[o] = vmax(band[o], diff);
      }
      // Cells reduced once, merged in the order score_table and merge_rows use (earlier wins only when
      // larger): the suffix rows' cached cells, then the candidate prefix's own rows.
      if (sc) best.update(vsel(lanes < n, vsplat(sc->best[hs].v), vsplat(NEG_INF)), sc->best[hs].i, sc->best[hs].j);
      if (E.max) {
        best.update(vsel(lanes < n, vsplat(E.max[hs]), vsplat(NEG_INF)), int32_t(E.pos[2 * hs]), int32_t(E.pos[2 * hs + 1]));
        kl += E.kl[hs];
      }
      for (int l = 0; l < n; ++l) {
        out_max[size_t(l) * Hs + hs] = best.v[l];
        out_pos[(size_t(l) * Hs + hs) * 2] = best.i[l];
        out_pos[(size_t(l) * Hs + hs) * 2 + 1] = best.j[l];
        out_kl[size_t(l) * Hs + hs] = std::max(0.f, kl[l]);
      }
    }
  }
  for (int o = 0; o < n_off; ++o) {
    const float cached = std::max(sc ? sc->band[o] : 0.f, E.max ? E.band[o] : 0.f);
    for (int l = 0; l < n; ++l) out_band[size_t(l) * n_off + o] = std::max(band[o][l], cached);
  }
}

template <typename T>
void run_extend(const Problem<T>& P, const int64_t* pool, int64_t N, const int64_t* suffix, int64_t s, const Earlier& E,
                float* out_max, int64_t* out_pos, float* out_kl, float* out_band) {
  SufCache cache;
  cache.c = 1, cache.s = int(s);
  if (s) build_suffix_cache(P, suffix, cache);
  const SufCache* sc = s ? &cache : nullptr;
  const Relative R = relative_to(P, cache);
  const int Hs = P.Hs, n_off = P.n_off;
#pragma omp parallel
  {
    ExtWorkspace ws;
#pragma omp for schedule(dynamic, 4)
    for (int64_t b0 = 0; b0 < N; b0 += BLOCK) {
      const int n = int(std::min<int64_t>(BLOCK, N - b0));
      const int n_next = int(std::clamp<int64_t>(N - b0 - BLOCK, 0, BLOCK));
      score_block(P, pool + b0, n, pool + b0 + BLOCK, n_next, sc, E, R, ws, out_max + b0 * Hs,
                  out_pos + b0 * Hs * 2, out_kl + b0 * Hs, out_band + b0 * n_off);
    }
  }
}

}  // namespace

py::tuple extend_table(py::array q_base, py::array k_base, py::array q_dorm, py::array k_dorm, int64_t num_heads,
                       int64_t num_kv_heads, int64_t head_dim, I64Array pool, I64Array suffix, I64Array heads,
                       F32Array prefix_keys, int64_t prefix_len, int64_t cand_start, F32Array cos, F32Array sin,
                       F32Array rev_baseline, I64Array offsets, bool region_all, F32Array earlier_max,
                       I64Array earlier_pos, F32Array earlier_kl, F32Array earlier_band) {
  const Tables tabs = check_tables(q_base, k_base, q_dorm, k_dorm, num_heads, num_kv_heads, head_dim);
  if (pool.ndim() != 1) throw py::value_error("pool must be 1-D");
  const int64_t N = pool.size(), s = suffix.size();
  const int64_t* pp = pool.data();
  const int64_t* suf = suffix.data();
  for (int64_t n = 0; n < N; ++n)
    if (pp[n] < 0 || pp[n] >= tabs.V)
      throw py::value_error("pool id " + std::to_string(pp[n]) + " outside [0, " + std::to_string(tabs.V) + ")");
  for (int64_t u = 0; u < s; ++u)
    if (suf[u] < 0 || suf[u] >= tabs.V) throw py::value_error("suffix id " + std::to_string(suf[u]) + " outside the table");
  const int64_t Hs = heads.size(), n_off = offsets.size();
  Earlier E;
  if (earlier_max.size()) {
    if (earlier_max.size() != Hs || earlier_pos.size() != 2 * Hs || earlier_kl.size() != Hs ||
        earlier_band.size() != n_off)
      throw py::value_error("earlier rows' stats must be [len(heads)], [len(heads), 2], [len(heads)], [len(offsets)]");
    E = {earlier_max.data(), earlier_pos.data(), earlier_kl.data(), earlier_band.data()};
  }
  RowOutputs out(N, Hs, n_off);
  with_problem(tabs, num_heads, num_kv_heads, head_dim, heads, prefix_keys, prefix_len, cand_start, cos, sin,
               rev_baseline, offsets, region_all, 1 + s,
               [&](const auto& P) { run_extend(P, pp, N, suf, s, E, out.max, out.pos, out.kl, out.bnd); });
  return out.tuple();
}

}  // namespace l0score
