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
// Logits are small GEMMs: the query heads of one KV group (7 for Qwen2-7B) at one row against up
// to 3 key vectors of 16 keys, so each loaded key vector feeds every head of the group. Keys are
// stored transposed ([D][keys]) so one FMA updates 16 keys at once.
#include "score.h"

#include <omp.h>

#include <algorithm>
#include <climits>
#include <type_traits>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "simd.h"

namespace py = pybind11;

namespace l0score {
namespace {

constexpr int MAX_NH = 8;  // query heads per micro-kernel call
constexpr int MAX_NV = 3;  // key vectors per micro-kernel call
constexpr int NARROW = 8;  // lanes of a narrow key vector (candidate keys, prefix tail)
#ifndef L0_RB
#define L0_RB 4
#endif
constexpr int RB = L0_RB;  // heads reduced together (independent dependency chains overlap)

// One transposed vector of consecutive keys of one KV group: element (d, l) at kb[d * stride + l]
// (base model) and kd[...] (dormant); its logits land in S row columns col..col+width-1, where
// col is the key's absolute position. width is 16 (wide) or 8 (narrow).
struct KeyVec {
  const float* kb;
  const float* kd;
  int stride, col, width;
};

// S[h][col_v + l] = scale * q[h] . k_v[:, l] for NH query rows, NZ wide then NY narrow vectors.
// Every loaded key vector feeds all NH rows; the accumulators stay in registers. With few
// accumulators (<= 8) even and odd d accumulate separately, so FMA latency does not bound it.
template <int NH, int NZ, int NY>
void micro(const float* __restrict q, int D, const KeyVec* kv, bool dorm, float scale, float* __restrict out,
           int ostride) {
  constexpr int AZ = NZ > 0 ? NZ : 1, AY = NY > 0 ? NY : 1;
  constexpr int NS = (NZ + NY) * NH <= 8 ? 2 : 1;
  v16f az[NS][NH][AZ];
  v8f ay[NS][NH][AY];
  const float* pz[AZ];
  const float* py[AY];
  int sz[AZ], sy[AY];
#pragma GCC unroll 2
  for (int e = 0; e < NS; ++e)
#pragma GCC unroll 8
    for (int h = 0; h < NH; ++h) {
#pragma GCC unroll 3
      for (int z = 0; z < NZ; ++z) az[e][h][z] = v16f{};
#pragma GCC unroll 3
      for (int y = 0; y < NY; ++y) ay[e][h][y] = v8f{};
    }
#pragma GCC unroll 3
  for (int z = 0; z < NZ; ++z) pz[z] = dorm ? kv[z].kd : kv[z].kb, sz[z] = kv[z].stride;
#pragma GCC unroll 3
  for (int y = 0; y < NY; ++y) py[y] = dorm ? kv[NZ + y].kd : kv[NZ + y].kb, sy[y] = kv[NZ + y].stride;
  for (int d = 0; d < D; d += NS) {
#pragma GCC unroll 2
    for (int e = 0; e < NS; ++e) {
      v16f kz[AZ];
      v8f ky[AY];
#pragma GCC unroll 3
      for (int z = 0; z < NZ; ++z) kz[z] = vload(pz[z]), pz[z] += sz[z];
#pragma GCC unroll 3
      for (int y = 0; y < NY; ++y) ky[y] = vload8(py[y]), py[y] += sy[y];
#pragma GCC unroll 8
      for (int h = 0; h < NH; ++h) {
        // One broadcast per row: the narrow vectors use its low half.
        const v16f qz = vsplat(q[h * D + d + e]);
#pragma GCC unroll 3
        for (int z = 0; z < NZ; ++z) az[e][h][z] += qz * kz[z];
        if (NY) {
          const v8f qy = low_half(qz);
#pragma GCC unroll 3
          for (int y = 0; y < NY; ++y) ay[e][h][y] += qy * ky[y];
        }
      }
    }
  }
  // Stores in list order: a later vector may overwrite the zero-key padding of an earlier one.
#pragma GCC unroll 8
  for (int h = 0; h < NH; ++h) {
#pragma GCC unroll 3
    for (int z = 0; z < NZ; ++z)
      vstore(out + h * ostride + kv[z].col, (NS == 2 ? az[0][h][z] + az[NS - 1][h][z] : az[0][h][z]) * scale);
#pragma GCC unroll 3
    for (int y = 0; y < NY; ++y)
      vstore8(out + h * ostride + kv[NZ + y].col, (NS == 2 ? ay[0][h][y] + ay[NS - 1][h][y] : ay[0][h][y]) * scale);
  }
}

using MicroFn = void (*)(const float*, int, const KeyVec*, bool, float, float*, int);
// Index by [NH-1][NZ][NY] (NZ + NY <= 3).
#define L0_MK(nh)                                                                         \
  {                                                                                       \
    {nullptr, &micro<nh, 0, 1>, &micro<nh, 0, 2>, &micro<nh, 0, 3>},                      \
        {&micro<nh, 1, 0>, &micro<nh, 1, 1>, &micro<nh, 1, 2>, nullptr},                  \
        {&micro<nh, 2, 0>, &micro<nh, 2, 1>, nullptr, nullptr}, {&micro<nh, 3, 0>, nullptr, nullptr, nullptr} \
  }
const MicroFn MICRO[MAX_NH][4][4] = {L0_MK(1), L0_MK(2), L0_MK(3), L0_MK(4), L0_MK(5), L0_MK(6), L0_MK(7), L0_MK(8)};
#undef L0_MK

struct Soft {  // online softmax state of one row, both models: A = sum e_d (S_d - S_b), e_d = exp(S_d - md)
  float md, mb, zd, zb, a;
};
const Soft SOFT_EMPTY = {NEG_INF, NEG_INF, 0.f, 0.f, 0.f};

struct Best {
  float v;
  int32_t i, j;
};
const Best BEST_EMPTY = {NEG_INF, 0, 0};

// A run of key positions [lo, hi) of one row; positions >= score_from count for max-type metrics.
struct Range {
  int lo, hi, score_from;
};

// S_base and S_dorm of one row for nh heads: wide vectors must precede narrow ones in vecs.
void row_logits(const float* qb, const float* qd, int nh, int D, const KeyVec* vecs, int nvec, float scale,
                float* Sb, float* Sd, int sstride) {
  for (int h0 = 0; h0 < nh; h0 += MAX_NH) {
    const int nhc = std::min(MAX_NH, nh - h0);
    for (int v0 = 0; v0 < nvec; v0 += MAX_NV) {
      const int nv = std::min(MAX_NV, nvec - v0);
      int nz = 0;
      while (nz < nv && vecs[v0 + nz].width == LANES) ++nz;
      const MicroFn fn = MICRO[nhc - 1][nz][nv - nz];
      fn(qb + size_t(h0) * D, D, vecs + v0, false, scale, Sb + size_t(h0) * sstride, sstride);
      fn(qd + size_t(h0) * D, D, vecs + v0, true, scale, Sd + size_t(h0) * sstride, sstride);
    }
  }
}

// Fold one row's logits of NB heads (processed together, so their independent dependency chains
// overlap) over the given ranges into their softmax states and maxima.
template <int NB>
inline void reduce_heads(const float* Sb, const float* Sd, int sstride, const Range* ranges, int nr, int64_t i,
                         const float* rb, int64_t rbstride, int64_t M, Soft* st, Best* best) {
  const v16i lanes = lane_ids();
  const v16f ninf = vsplat(NEG_INF), zero = v16f{}, minus1 = vsplat(-1.f);
  const float* sb[NB];
  const float* sd[NB];
  const float* bl[NB];
  v16f vmd[NB], vmb[NB], vam[NB];
  v16i varg[NB];
#pragma GCC unroll 4
  for (int k = 0; k < NB; ++k) {
    sb[k] = Sb + size_t(k) * sstride;
    sd[k] = Sd + size_t(k) * sstride;
    bl[k] = rb ? rb + k * rbstride + (M - i) : nullptr;
    vmd[k] = vmb[k] = ninf;
    vam[k] = minus1;
    varg[k] = v16i{} + INT_MAX;
  }
  for (int r = 0; r < nr; ++r) {
    const Range& R = ranges[r];
    const bool scored = R.score_from < R.hi;
    for (int j = R.lo; j < R.hi; j += LANES) {
      const bool tail = R.hi - j < LANES;
      const v16i ok = tail ? lanes < (R.hi - j) : v16i{} - 1;
      const v16i jj = lanes + j;
      const v16i sc = ok & (jj >= R.score_from);
#pragma GCC unroll 4
      for (int k = 0; k < NB; ++k) {
        v16f d = vload(sd[k] + j), b = vload(sb[k] + j);
        if (tail) d = vsel(ok, d, ninf), b = vsel(ok, b, ninf);
        vmd[k] = vmax(vmd[k], d);
        vmb[k] = vmax(vmb[k], b);
        if (scored) {
          v16f diff = d - b;
          if (bl[k]) diff -= vload(bl[k] + j);
          const v16f a = vsel(sc, vabs(diff), minus1);
          const v16i gt = a > vam[k];
          vam[k] = vsel(gt, a, vam[k]);
          varg[k] = gt ? jj : varg[k];
        }
      }
    }
  }
  v16f vzd[NB], vzb[NB], va[NB], mdv[NB], mbv[NB];
  float md[NB], mb[NB];
#pragma GCC unroll 4
  for (int k = 0; k < NB; ++k) {
    const float am = hmax(vam[k]);
    if (am >= 0.f && am > best[k].v) {  // the first key holding the row's maximum
      int32_t jbest = INT_MAX;
      for (int l = 0; l < LANES; ++l)
        if (vam[k][l] == am && varg[k][l] < jbest) jbest = varg[k][l];
      best[k] = {am, int32_t(i), jbest};
    }
    md[k] = std::max(hmax(vmd[k]), st[k].md);
    mb[k] = std::max(hmax(vmb[k]), st[k].mb);
    mdv[k] = vsplat(md[k]);
    mbv[k] = vsplat(mb[k]);
    vzd[k] = vzb[k] = va[k] = zero;
  }
  for (int r = 0; r < nr; ++r) {
    const Range& R = ranges[r];
    for (int j = R.lo; j < R.hi; j += LANES) {
      const bool tail = R.hi - j < LANES;
      const v16i ok = tail ? lanes < (R.hi - j) : v16i{} - 1;
#pragma GCC unroll 4
      for (int k = 0; k < NB; ++k) {
        const v16f d = vload(sd[k] + j), b = vload(sb[k] + j);
        v16f ed = vexp(d - mdv[k]), eb = vexp(b - mbv[k]);
        if (tail) ed = vsel(ok, ed, zero), eb = vsel(ok, eb, zero);
        vzd[k] += ed;
        vzb[k] += eb;
        va[k] += ed * (d - b);
      }
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < NB; ++k) {
    const float cd = st[k].md == NEG_INF ? 0.f : std::exp(st[k].md - md[k]);
    const float cb = st[k].mb == NEG_INF ? 0.f : std::exp(st[k].mb - mb[k]);
    st[k] = {md[k], mb[k], st[k].zd * cd + hsum(vzd[k]), st[k].zb * cb + hsum(vzb[k]), st[k].a * cd + hsum(va[k])};
  }
}

// Fold one row's logits (S rows indexed by key position) over the given ranges into the per-head
// softmax states, maxima and band. rb: reversed baseline of the group's first head, or null
// (baseline(i - j) = rb[h * rbstride + M - i + j]). Only a range's last chunk of 16 is masked.
void reduce_row(const float* Sb, const float* Sd, int sstride, int nh, const Range* ranges, int nr, int64_t i,
                const float* rb, int64_t rbstride, int64_t M, Soft* st, Best* best, float* band,
                const int64_t* offsets, int n_off) {
  int h = 0;
  auto block = [&](auto nb) {
    constexpr int NB = decltype(nb)::value;
    reduce_heads<NB>(Sb + size_t(h) * sstride, Sd + size_t(h) * sstride, sstride, ranges, nr, i,
                     rb ? rb + h * rbstride : nullptr, rbstride, M, st + h, best + h);
    h += NB;
  };
  while (nh - h >= RB) block(std::integral_constant<int, RB>());
  switch (nh - h) {
    case 3: block(std::integral_constant<int, 3>()); break;
    case 2: block(std::integral_constant<int, 2>()); break;
    case 1: block(std::integral_constant<int, 1>()); break;
    default: break;
  }
  for (int n = 0; n < n_off; ++n) {
    const int64_t j = i - offsets[n];
    for (int r = 0; r < nr; ++r) {
      if (j < ranges[r].lo || j >= ranges[r].hi || j < ranges[r].score_from) continue;
      for (int k = 0; k < nh; ++k) {
        float x = Sd[size_t(k) * sstride + j] - Sb[size_t(k) * sstride + j];
        if (rb) x -= rb[k * rbstride + M - offsets[n]];
        band[n] = std::max(band[n], std::fabs(x));
      }
    }
  }
}

// Sum over rows of KL(softmax S_d || softmax S_b) = A/zd - (md - mb) + log(zb / zd): the linear
// parts are summed, the ratios multiplied (one log per head and candidate, renormalised if large).
struct KlAcc {
  double lin = 0.0, prod = 1.0;
  void add(const Soft& s) {
    const double r = 1.0 / double(s.zd);
    lin += double(s.a) * r - (double(s.md) - double(s.mb));
    prod *= double(s.zb) * r;
    if (prod > 1e200 || prod < 1e-200) lin += std::log(prod), prod = 1.0;
  }
  double value() const { return lin + std::log(prod); }
};

inline float tof(float x) { return x; }
inline float tof(uint16_t x) { return bf16_to_f32(x); }

// RoPE (half split) of one head vector read from a table row.
template <typename T>
inline void rope(const T* __restrict src, const float* __restrict cs, const float* __restrict sn, int D,
                 float* __restrict dst) {
  const int half = D / 2;
  for (int k = 0; k < half; ++k) {
    const float x1 = tof(src[k]), x2 = tof(src[k + half]);
    dst[k] = x1 * cs[k] - x2 * sn[k];
    dst[k + half] = x2 * cs[k] + x1 * sn[k];
  }
}

struct Group {
  int g, h0, nh;  // KV head, first local (scored) head index, number of scored heads in it
};

inline int ceil_to(int x, int m) { return (x + m - 1) / m * m; }

template <typename T>
struct Problem {
  const T* tab[4];  // q_base, k_base, q_dorm, k_dorm
  int64_t H, KV, D;
  const int64_t* heads;
  int Hs;
  std::vector<Group> groups;
  int gmax;
  const float* pkeys;  // [2][KV][D][ppad]
  int p, ppad, cand_start;
  const float *cos, *sin;  // [npos][D/2]
  const float* rb;         // [Hs][rbstride] or null
  int64_t rbstride, M;
  const int64_t* offsets;
  int n_off;
  bool region_all;
  float scale;

  const T* qrow(int m, int64_t id, int64_t head) const { return tab[2 * m] + (id * H + head) * D; }
  const T* krow(int m, int64_t id, int64_t g) const { return tab[2 * m + 1] + (id * KV + g) * D; }
  const float* cs(int64_t pos) const { return cos + pos * (D / 2); }
  const float* sn(int64_t pos) const { return sin + pos * (D / 2); }
  const float* rb_group(const Group& gr) const { return rb ? rb + gr.h0 * rbstride : nullptr; }
  // The prefix keys of KV head g: wide vectors, then a narrow one for a tail of <= 8 keys.
  int prefix_vecs(int g, KeyVec* out) const {
    int n = 0;
    const float* kb = pkeys + size_t(0 * KV + g) * D * ppad;
    const float* kd = pkeys + size_t(1 * KV + g) * D * ppad;
    for (int c = 0; c < p;) {
      const int w = ppad - c >= LANES ? LANES : NARROW;
      out[n++] = {kb + c, kd + c, ppad, c, w};
      c += w;
    }
    return n;
  }
  // Software prefetch of the query rows (span of the scored heads, both models) of token id, and
  // of its whole key rows: issued one row step ahead, so they arrive while that step computes.
  void prefetch_q(int64_t id, int mode) const {
    for (int m = 0; m < 2; ++m) {
      const char* q = reinterpret_cast<const char*>(qrow(m, id, heads[0]));
      const char* e = reinterpret_cast<const char*>(qrow(m, id, heads[Hs - 1]) + D);
      prefetch_span(q, e, mode);
    }
  }
  void prefetch_k(int64_t id, int mode) const {
    for (int m = 0; m < 2; ++m) {
      const char* k = reinterpret_cast<const char*>(krow(m, id, 0));
      prefetch_span(k, k + KV * D * sizeof(T), mode);
    }
  }
  static void prefetch_span(const char* p, const char* e, int mode) {
    if (mode == 1 || mode == 3)
      for (; p < e; p += 128) __builtin_prefetch(p, 0, 3);
    else if (mode == 2 || mode == 4)
      for (; p < e; p += 64) __builtin_prefetch(p, 0, 3);
  }
  // One real load per 4 KiB page of every table row a candidate reads: issued together, their TLB
  // misses (page walks) overlap instead of stalling one row at a time.
  int touch_pages(const int64_t* ids, int c) const {
    int sink = 0;
    auto touch = [&](const T* a, const T* b) {
      const char* p = reinterpret_cast<const char*>(a);
      const char* e = reinterpret_cast<const char*>(b);
      for (; p < e; p = reinterpret_cast<const char*>((reinterpret_cast<uintptr_t>(p) | 4095) + 1))
        sink += *reinterpret_cast<const volatile char*>(p);
    };
    for (int t = 0; t < c; ++t)
      for (int m = 0; m < 2; ++m) {
        touch(qrow(m, ids[t], heads[0]), qrow(m, ids[t], heads[Hs - 1]) + D);
        touch(krow(m, ids[t], 0), krow(m, ids[t], 0) + KV * D);
      }
    return sink;
  }
};

// What the suffix rows of every candidate of length c share: rotated suffix queries (group-major:
// row (u, h) of group gi at q + (m * s * Hs + s * h0 + u * nh + h) * D) and the reduction of their
// cells against prefix and suffix keys.
struct SufCache {
  int c = 0, s = 0;
  std::vector<float> q;  // [2][s * Hs][D]
  std::vector<Soft> st;  // [s][Hs]
  std::vector<Best> best;  // [Hs]
  std::vector<float> band;  // [n_off]
  const float* rows(int m, const Group& gr, int u, int Hs, int D) const {
    return q.data() + (size_t(m) * s * Hs + size_t(s) * gr.h0 + size_t(u) * gr.nh) * D;
  }
};

// Rotated keys of tokens ids[0..n) at positions pos0.. into a transposed [D][npad] tile (npad a
// multiple of 8, columns >= n zero): rotate rows into tmp, then 8 x 8 in-register transposes.
template <typename T>
void key_tile(const Problem<T>& P, int m, int g, const int64_t* ids, int n, int npad, int64_t pos0, float* tmp,
              float* tile) {
  const int D = int(P.D);
  for (int t = 0; t < npad; ++t) {
    if (t < n)
      rope(P.krow(m, ids[t], g), P.cs(pos0 + t), P.sn(pos0 + t), D, tmp + size_t(t) * D);
    else
      std::fill_n(tmp + size_t(t) * D, D, 0.f);
  }
  for (int t0 = 0; t0 < npad; t0 += NARROW) {
    int d0 = 0;
    for (; d0 + NARROW <= D; d0 += NARROW) {
      v8f r[NARROW];
      for (int i = 0; i < NARROW; ++i) r[i] = vload8(tmp + size_t(t0 + i) * D + d0);
      transpose8(r);
      for (int i = 0; i < NARROW; ++i) vstore8(tile + size_t(d0 + i) * npad + t0, r[i]);
    }
    for (; d0 < D; ++d0)
      for (int i = 0; i < NARROW; ++i) tile[size_t(d0) * npad + t0 + i] = tmp[size_t(t0 + i) * D + d0];
  }
}

template <typename T>
void build_suffix_cache(const Problem<T>& P, const int64_t* suffix, SufCache& sc) {
  const int c = sc.c, s = sc.s, D = int(P.D), Hs = P.Hs, ng = int(P.groups.size());
  const int spad = ceil_to(s, NARROW);
  const int base = P.p + c;
  sc.q.assign(size_t(2) * s * Hs * D, 0.f);
  sc.st.assign(size_t(s) * Hs, SOFT_EMPTY);
  sc.best.assign(Hs, BEST_EMPTY);
  sc.band.assign(P.n_off, 0.f);
  std::vector<float> ks(size_t(2) * ng * D * spad, 0.f), tmp(size_t(spad) * D);
  for (int m = 0; m < 2; ++m)
    for (int gi = 0; gi < ng; ++gi) {
      const Group& gr = P.groups[gi];
      for (int u = 0; u < s; ++u)
        for (int h = 0; h < gr.nh; ++h)
          rope(P.qrow(m, suffix[u], P.heads[gr.h0 + h]), P.cs(base + u), P.sn(base + u), D,
               const_cast<float*>(sc.rows(m, gr, u, Hs, D)) + size_t(h) * D);
      key_tile(P, m, gr.g, suffix, s, spad, base, tmp.data(), ks.data() + (size_t(m) * ng + gi) * D * spad);
    }
  const int nvmax = P.ppad / NARROW + spad / NARROW;
  std::vector<KeyVec> vecs(nvmax);
  AlignedBuf bufb, bufd;
  const int sstride = base + spad + LANES;
  float* Sb = bufb.zeroed(size_t(P.gmax) * sstride);
  float* Sd = bufd.zeroed(size_t(P.gmax) * sstride);
  const int never = INT_MAX;
  const int prefix_from = P.region_all ? 0 : P.cand_start;
  const int suffix_from = P.region_all ? 0 : never;
  for (int gi = 0; gi < ng; ++gi) {
    const Group& gr = P.groups[gi];
    for (int u = 0; u < s; ++u) {
      int nv = P.prefix_vecs(gr.g, vecs.data());
      for (int v = 0; v * NARROW <= u; ++v) {
        const float* kb = ks.data() + (size_t(0) * ng + gi) * D * spad + v * NARROW;
        const float* kd = ks.data() + (size_t(1) * ng + gi) * D * spad + v * NARROW;
        vecs[nv++] = {kb, kd, spad, base + v * NARROW, NARROW};
      }
      row_logits(sc.rows(0, gr, u, Hs, D), sc.rows(1, gr, u, Hs, D), gr.nh, D, vecs.data(), nv, P.scale, Sb, Sd,
                 sstride);
      const Range ranges[2] = {{0, P.p, prefix_from}, {base, base + u + 1, suffix_from}};
      reduce_row(Sb, Sd, sstride, gr.nh, ranges, 2, base + u, P.rb_group(gr), P.rbstride, P.M,
                 sc.st.data() + size_t(u) * Hs + gr.h0, sc.best.data() + gr.h0, sc.band.data(), P.offsets,
                 P.n_off);
    }
  }
}

struct Workspace {
  AlignedBuf q, k, sb, sd, tmp;
  std::vector<KeyVec> vecs;
  std::vector<Soft> st;
  std::vector<Best> best;
  std::vector<KlAcc> kl;
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
      for (int h = 0; h < gr.nh; ++h) {
        const int64_t head = P.heads[gr.h0 + h];
        rope(P.qrow(0, id, head), P.cs(p + t), P.sn(p + t), D, qb + size_t(h) * D);
        rope(P.qrow(1, id, head), P.cs(p + t), P.sn(p + t), D, qd + size_t(h) * D);
      }
      const float* kb = K + (size_t(0) * ng + gi) * D * cpad;
      const float* kd = K + (size_t(1) * ng + gi) * D * cpad;
      int nv = P.prefix_vecs(gr.g, vecs);
      for (int v = 0; v * NARROW <= t; ++v) vecs[nv++] = {kb + v * NARROW, kd + v * NARROW, cpad, p + v * NARROW, NARROW};
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

struct TableView {
  const void* ptr;
  bool bf16;
  int64_t rows, cols;
};

TableView table_view(const py::array& a, const char* name, int64_t cols) {
  if (a.ndim() != 2 || a.shape(1) != cols)
    throw py::value_error(std::string(name) + ": expected a 2-D table with " + std::to_string(cols) + " columns");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": table must be C-contiguous");
  const char kind = a.dtype().kind();
  if (kind == 'f' && a.itemsize() == 4) return {a.data(), false, a.shape(0), cols};
  if ((kind == 'i' || kind == 'u') && a.itemsize() == 2) return {a.data(), true, a.shape(0), cols};
  throw py::type_error(std::string(name) + ": table must be float32 or bfloat16 bits (int16)");
}

}  // namespace

py::tuple score_table(py::array q_base, py::array k_base, py::array q_dorm, py::array k_dorm,
                      int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, I64Array ids,
                      I64Array cand_len, I64Array dep_len, I64Array suffix, I64Array heads,
                      F32Array prefix_keys, int64_t prefix_len, int64_t cand_start, F32Array cos,
                      F32Array sin, F32Array rev_baseline, I64Array offsets, bool region_all) {
  const int64_t H = num_heads, KV = num_kv_heads, D = head_dim;
  if (H <= 0 || KV <= 0 || H % KV || D <= 0 || D % 2) throw py::value_error("bad head configuration");
  const TableView tv[4] = {table_view(q_base, "q_base", H * D), table_view(k_base, "k_base", KV * D),
                           table_view(q_dorm, "q_dorm", H * D), table_view(k_dorm, "k_dorm", KV * D)};
  const int64_t V = tv[0].rows;
  for (const auto& t : tv)
    if (t.rows != V || t.bf16 != tv[0].bf16) throw py::value_error("the four tables must share rows and dtype");
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
  const int64_t p = prefix_len;
  if (p < 0 || cand_start < 0 || cand_start > p) throw py::value_error("bad prefix_len / cand_start");
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
  const int64_t Hs = heads.size();
  const int64_t* hp = heads.data();
  if (Hs < 1) throw py::value_error("no scored heads");
  for (int64_t n = 0; n < Hs; ++n)
    if (hp[n] < 0 || hp[n] >= H || (n && hp[n] <= hp[n - 1]))
      throw py::value_error("heads must be sorted, distinct, in range");
  const int64_t ppad = ((p + NARROW - 1) / NARROW) * NARROW;
  if (prefix_keys.size() != 2 * KV * D * ppad)
    throw py::value_error("prefix_keys must be [2, KV, D, ceil8(prefix_len)]");
  const int64_t npos = cos.ndim() == 2 ? cos.shape(0) : 0;
  if (cos.ndim() != 2 || cos.shape(1) != D / 2 || sin.ndim() != 2 || sin.shape(0) != npos || sin.shape(1) != D / 2)
    throw py::value_error("cos/sin must be [positions, D/2]");
  if (p + max_dep > npos) throw py::value_error("cos/sin do not cover every row position");
  const int64_t M = p + max_dep - 1;  // largest row position
  const bool has_rb = rev_baseline.size() > 0;
  int64_t rbstride = 0;
  if (has_rb) {
    if (rev_baseline.ndim() != 2 || rev_baseline.shape(0) != Hs || rev_baseline.shape(1) < M + 1 + LANES)
      throw py::value_error("rev_baseline must be [len(heads), >= max position + 17]");
    rbstride = rev_baseline.shape(1);
  }
  const int64_t n_off = offsets.size();
  for (int64_t n = 0; n < n_off; ++n)
    if (offsets.data()[n] < 0) throw py::value_error("band offsets must be >= 0");
  if (p + max_dep >= INT_MAX / 2) throw py::value_error("sequence too long");

  py::array_t<float> head_max({B, Hs});
  py::array_t<int64_t> head_pos({B, Hs, int64_t(2)});
  py::array_t<float> head_kl({B, Hs});
  py::array_t<float> band({B, n_off});

  auto fill = [&](auto& P) {
    P.H = H, P.KV = KV, P.D = D;
    P.heads = hp;
    P.Hs = int(Hs);
    const int64_t group = H / KV;
    P.gmax = 0;
    for (int64_t n = 0; n < Hs;) {
      const int g = int(hp[n] / group);
      int64_t e = n;
      while (e < Hs && hp[e] / group == g) ++e;
      P.groups.push_back({g, int(n), int(e - n)});
      P.gmax = std::max(P.gmax, int(e - n));
      n = e;
    }
    P.pkeys = prefix_keys.data();
    P.p = int(p), P.ppad = int(ppad), P.cand_start = int(cand_start);
    P.cos = cos.data(), P.sin = sin.data();
    P.rb = has_rb ? rev_baseline.data() : nullptr;
    P.rbstride = rbstride, P.M = M;
    P.offsets = offsets.data();
    P.n_off = int(n_off);
    P.region_all = region_all;
    P.scale = float(1.0 / std::sqrt(double(D)));
  };
  float* om = head_max.mutable_data();
  int64_t* op = head_pos.mutable_data();
  float* ok = head_kl.mutable_data();
  float* ob = band.mutable_data();
  if (tv[0].bf16) {
    Problem<uint16_t> P;
    for (int n = 0; n < 4; ++n) P.tab[n] = static_cast<const uint16_t*>(tv[n].ptr);
    fill(P);
    py::gil_scoped_release release;
    run(P, idp, B, W, cl, dl, suf, om, op, ok, ob);
  } else {
    Problem<float> P;
    for (int n = 0; n < 4; ++n) P.tab[n] = static_cast<const float*>(tv[n].ptr);
    fill(P);
    py::gil_scoped_release release;
    run(P, idp, B, W, cl, dl, suf, om, op, ok, ob);
  }
  return py::make_tuple(head_max, head_pos, head_kl, band);
}

}  // namespace l0score
