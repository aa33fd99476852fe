// Building blocks shared by the token-table scorers (score.cpp: whole candidates; extend.cpp: one
// appended token over a pool): the logit micro-kernel, per-row reductions (online softmax, max,
// band), RoPE, transposed key tiles, the suffix-row cache, and input validation.
//
// Logits are small GEMMs: the query heads of one KV group (7 for Qwen2-7B) at one row against up
// to 3 key vectors of 16 keys, so each loaded key vector feeds every head of the group. Keys are
// stored transposed ([D][keys]) so one FMA updates 16 keys at once.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "score.h"
#include "simd.h"
#include "table_build.h"

namespace l0score {
namespace rows {

namespace py = pybind11;

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

// Online state of one row, both models, for KL(p_d || p_b) computed from dS (docs/precision.md):
// with the shift c = md - mb, x_j = dS_j - c, e_j = exp(S_d,j - md) and f(x) = x + expm1(-x) >= 0,
//   zd = sum e_j,   a = sum e_j x_j,   F = sum e_j f(x_j),
//   KL(row) = E_pd[dS] + log E_pd[exp(-dS)] = F/zd + g(F/zd - a/zd),   g(y) = log1p(y) - y.
// f is a polynomial where |x| < ln2/2 and e_j x_j + (exp(S_b,j - mb) - e_j) elsewhere, so each
// term's rounding error is relative to itself (~x^2): the first-order parts of E[dS] and
// log E[exp(-dS)] (size ~dS) never meet in float. The textbook sum p_d (log p_d - log p_b) cancels
// two log-softmaxes that each carry ~ulp(S) (S is tens, a row's KL ~dS^2). zd, zd + F - a (the
// base model's sum) lie in [1, row length]: nothing overflows.
struct Soft {
  float md, mb, zd, a, f;
};
const Soft SOFT_EMPTY = {NEG_INF, NEG_INF, 0.f, 0.f, 0.f};

// One cell's e_j f(x_j) (eb = exp(S_b - mb)).
static inline v16f kl_term(v16f x, v16f ed, v16f eb) {
  const v16i small = vabs(x) < KL_SMALL;
  return vsel(small, ed * kl_f_small(vsel(small, x, v16f{})), ed * x + (eb - ed));
}

// Fold partial sums (zd, a, f) of new cells, taken relative to the new maxima (md, mb), into a
// state s with older maxima: the old cells' weights scale by ad = exp(md_old - md) and their x
// move by delta = c_new - c_old, so (with ab = exp(mb_old - mb) = ad exp(delta))
//   a <- ad (a - delta zd),   F <- ad F + ad f(-delta) zd + ad expm1(delta) (F - a).
inline Soft soft_merge(const Soft& s, float md, float mb, float zd, float a, float f) {
  if (s.md == NEG_INF) return {md, mb, zd, a, f};
  const float ad = std::exp(s.md - md), delta = (md - mb) - (s.md - s.mb);
  const bool small = std::fabs(delta) < KL_SMALL;
  const float em = small ? ad * expm1_small(delta) : std::exp(s.mb - mb) - ad;  // ad expm1(delta)
  const float efm = small ? ad * kl_f_small(-delta) : em - ad * delta;          // ad f(-delta)
  return {md, mb, ad * s.zd + zd, ad * (s.a - delta * s.zd) + a, ad * s.f + efm * s.zd + em * (s.f - s.a) + f};
}

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
inline void row_logits(const float* qb, const float* qd, int nh, int D, const KeyVec* vecs, int nvec, float scale,
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
  v16f vzd[NB], vf[NB], va[NB], mdv[NB], mbv[NB], cv[NB];
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
    cv[k] = vsplat(md[k] - mb[k]);
    vzd[k] = vf[k] = va[k] = zero;
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
        v16f x = (d - b) - cv[k];
        if (tail) ed = vsel(ok, ed, zero), eb = vsel(ok, eb, zero), x = vsel(ok, x, zero);
        vzd[k] += ed;
        va[k] += ed * x;
        vf[k] += kl_term(x, ed, eb);
      }
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < NB; ++k) st[k] = soft_merge(st[k], md[k], mb[k], hsum(vzd[k]), hsum(va[k]), hsum(vf[k]));
}

// Fold one row's logits (S rows indexed by key position) over the given ranges into the per-head
// softmax states, maxima and band. rb: reversed baseline of the group's first head, or null
// (baseline(i - j) = rb[h * rbstride + M - i + j]). Only a range's last chunk of 16 is masked.
inline void reduce_row(const float* Sb, const float* Sd, int sstride, int nh, const Range* ranges, int nr, int64_t i,
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

// Sum over rows of KL(softmax S_d || softmax S_b) = m + log1p(y), m = a/zd, y = F/zd - m (see
// Soft), in double: y = F/zd - a/zd is formed in double from the float sums (the first-order
// parts cancel exactly there), the linear parts m are summed and the ratios 1 + y multiplied (one
// log per head and candidate, renormalised if large).
struct KlAcc {
  double lin = 0.0, prod = 1.0;
  void add(const Soft& s) {
    const double r = 1.0 / double(s.zd), m = double(s.a) * r;
    add_parts(m, 1.0 + (double(s.f) * r - m));
  }
  // rows already folded elsewhere: their summed linear parts and the product of their ratios
  void add_parts(double l, double ratio) {
    lin += l;
    prod *= ratio;
    if (prod > 1e200 || prod < 1e-200) lin += std::log(prod), prod = 1.0;
  }
  double value() const { return lin + std::log(prod); }
};

// Per-thread scratch of a candidate's scoring: rotated q/k, both models' logits, softmax states,
// best cells, KL accumulators (score_table's and score_dependent's workspaces extend it).
struct RowScratch {
  AlignedBuf q, k, sb, sd, tmp;
  std::vector<KeyVec> vecs;
  std::vector<Soft> st;
  std::vector<Best> best;
  std::vector<KlAcc> kl;
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
  // Dependent row t (token id, absolute position pos) of group gi: both models' rotated queries of
  // its scored heads into qb/qd, and the keys it sees: the prefix's, then the row's own tile K
  // ([2][ng][D][pad]: both models' keys from position p on) up to itself. Returns the key vectors.
  int row_inputs(int gi, int64_t id, int64_t pos, int t, const float* K, int ng, int pad, float* qb, float* qd,
                 KeyVec* vecs) const {
    const Group& gr = groups[gi];
    for (int h = 0; h < gr.nh; ++h) {
      const int64_t head = heads[gr.h0 + h];
      rope(qrow(0, id, head), cs(pos), sn(pos), int(D), qb + size_t(h) * D);
      rope(qrow(1, id, head), cs(pos), sn(pos), int(D), qd + size_t(h) * D);
    }
    const float* kb = K + (size_t(0) * ng + gi) * D * pad;
    const float* kd = K + (size_t(1) * ng + gi) * D * pad;
    int nv = prefix_vecs(gr.g, vecs);
    for (int v = 0; v * NARROW <= t; ++v) vecs[nv++] = {kb + v * NARROW, kd + v * NARROW, pad, p + v * NARROW, NARROW};
    return nv;
  }
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

// S[j][lane] = scale * sum_d QT[d][lane] K[d * kstride + j] for J keys, then (SELF) one more row against
// 16 keys of the lanes' own tokens, KT[d][lane]. Tokens in lanes (extend.cpp, pair_scan.cpp). Each key element is broadcast once per d and feeds
// 16 tokens; the J (+1) accumulators are independent chains, enough to hide FMA latency for J >= 8.
template <int J, bool SELF>
void tokens_by_keys(const float* __restrict QT, const float* __restrict K, int kstride, const float* __restrict KT,
                    int D, float scale, float* __restrict S) {
  constexpr int NA = J + SELF;
  v16f acc[NA];
#pragma GCC unroll 17
  for (int j = 0; j < NA; ++j) acc[j] = v16f{};
  for (int d = 0; d < D; ++d) {
    const v16f q = vload(QT + size_t(d) * LANES);
    const float* k = K + size_t(d) * kstride;
#pragma GCC unroll 16
    for (int j = 0; j < J; ++j) acc[j] += q * vsplat(k[j]);
    if (SELF) acc[J] += q * vload(KT + size_t(d) * LANES);
  }
#pragma GCC unroll 17
  for (int j = 0; j < NA; ++j) vstore(S + size_t(j) * LANES, acc[j] * scale);
}

inline v8f load8(const float* p) { return vload8(p); }
inline v8f load8(const uint16_t* p) {  // 8 bf16 values widened to float32
  typedef uint16_t v8u16 __attribute__((vector_size(16), aligned(2)));
  typedef uint32_t v8u32 __attribute__((vector_size(32)));
  return (v8f)(__builtin_convertvector(*reinterpret_cast<const v8u16*>(p), v8u32) << 16);
}

// Rows row(0..n) of length D (float32 or bf16 bits) as a float32 transposed [D][npad] tile (npad a
// multiple of 8, columns >= n zero), by 8 x 8 in-register transposes.
template <typename RowOf>
void transpose_rows(RowOf row, int n, int npad, int D, float* tile) {
  using T = std::remove_cv_t<std::remove_pointer_t<decltype(row(0))>>;
  alignas(32) static const T zeros[NARROW] = {};
  for (int t0 = 0; t0 < npad; t0 += NARROW) {
    const T* r8[NARROW];
    for (int i = 0; i < NARROW; ++i) r8[i] = t0 + i < n ? row(t0 + i) : nullptr;
    int d0 = 0;
    for (; d0 + NARROW <= D; d0 += NARROW) {
      v8f r[NARROW];
      for (int i = 0; i < NARROW; ++i) r[i] = load8(r8[i] ? r8[i] + d0 : zeros);
      transpose8(r);
      for (int i = 0; i < NARROW; ++i) vstore8(tile + size_t(d0 + i) * npad + t0, r[i]);
    }
    for (; d0 < D; ++d0)
      for (int i = 0; i < NARROW; ++i) tile[size_t(d0) * npad + t0 + i] = r8[i] ? tof(r8[i][d0]) : 0.f;
  }
}

// Keys of KV head g (model m) of tokens ids[0..n) at positions pos0.. as a transposed [D][npad] tile
// (npad a multiple of 8, columns >= n zero): rotate rows into tmp, then transpose.
template <typename T>
void key_tile(const Problem<T>& P, int m, int g, const int64_t* ids, int n, int npad, int64_t pos0, float* tmp,
              float* tile) {
  const int D = int(P.D);
  for (int t = 0; t < n; ++t) rope(P.krow(m, ids[t], g), P.cs(pos0 + t), P.sn(pos0 + t), D, tmp + size_t(t) * D);
  transpose_rows([&](int t) { return tmp + size_t(t) * D; }, n, npad, D, tile);
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

struct TableView {
  const void* ptr;
  bool bf16;
  int64_t rows, cols;
};

inline TableView table_view(const py::array& a, const char* name, int64_t cols) {
  if (a.ndim() != 2 || a.shape(1) != cols)
    throw py::value_error(std::string(name) + ": expected a 2-D table with " + std::to_string(cols) + " columns");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": table must be C-contiguous");
  const char kind = a.dtype().kind();
  if (kind == 'f' && a.itemsize() == 4) return {a.data(), false, a.shape(0), cols};
  if ((kind == 'i' || kind == 'u') && a.itemsize() == 2) return {a.data(), true, a.shape(0), cols};
  throw py::type_error(std::string(name) + ": table must be float32 or bfloat16 bits (int16)");
}

// What a scorer returns, one row per candidate: head_max [B, Hs], head_pos [B, Hs, 2] (absolute
// i, j), head_kl [B, Hs], band [B, n_off]. Large results are mapped on huge pages before first touch.
struct RowOutputs {
  py::array_t<float> head_max, head_kl, band;
  py::array_t<int64_t> head_pos;
  float *max, *kl, *bnd;
  int64_t* pos;
  RowOutputs(int64_t B, int64_t Hs, int64_t n_off)
      : head_max({B, Hs}), head_kl({B, Hs}), band({B, n_off}), head_pos({B, Hs, int64_t(2)}) {
    for (py::buffer out : {py::buffer(head_max), py::buffer(head_pos), py::buffer(head_kl)}) advise_hugepages(out);
    max = head_max.mutable_data(), kl = head_kl.mutable_data(), bnd = band.mutable_data();
    pos = head_pos.mutable_data();
  }
  py::tuple tuple() const { return py::make_tuple(head_max, head_pos, head_kl, band); }
};

// The four tables of a pair, checked against the head configuration.
struct Tables {
  TableView tv[4];
  int64_t V;
};

inline Tables check_tables(const py::array& q_base, const py::array& k_base, const py::array& q_dorm,
                           const py::array& k_dorm, int64_t H, int64_t KV, int64_t D) {
  if (H <= 0 || KV <= 0 || H % KV || D <= 0 || D % 2) throw py::value_error("bad head configuration");
  Tables t{{table_view(q_base, "q_base", H * D), table_view(k_base, "k_base", KV * D),
            table_view(q_dorm, "q_dorm", H * D), table_view(k_dorm, "k_dorm", KV * D)},
           0};
  t.V = t.tv[0].rows;
  for (const auto& v : t.tv)
    if (v.rows != t.V || v.bf16 != t.tv[0].bf16) throw py::value_error("the four tables must share rows and dtype");
  return t;
}

// Validate the context inputs every scorer takes and call body(Problem<T>&) with the GIL released.
// max_dep: the most row positions after the prefix the call touches (sizes the RoPE/baseline checks).
template <typename F>
void with_problem(const Tables& t, int64_t H, int64_t KV, int64_t D, const I64Array& heads,
                  const F32Array& prefix_keys, int64_t p, int64_t cand_start, const F32Array& cos,
                  const F32Array& sin, const F32Array& rev_baseline, const I64Array& offsets, bool region_all,
                  int64_t max_dep, F&& body) {
  if (p < 0 || cand_start < 0 || cand_start > p) throw py::value_error("bad prefix_len / cand_start");
  const int64_t Hs = heads.size();
  const int64_t* hp = heads.data();
  if (Hs < 1) throw py::value_error("no scored heads");
  for (int64_t n = 0; n < Hs; ++n)
    if (hp[n] < 0 || hp[n] >= H || (n && hp[n] <= hp[n - 1]))
      throw py::value_error("heads must be sorted, distinct, in range");
  const int64_t ppad = ceil_to(int(p), NARROW);
  if (prefix_keys.size() != 2 * KV * D * ppad)
    throw py::value_error("prefix_keys must be [2, KV, D, ceil8(prefix_len)]");
  const int64_t npos = cos.ndim() == 2 ? cos.shape(0) : 0;
  if (cos.ndim() != 2 || cos.shape(1) != D / 2 || sin.ndim() != 2 || sin.shape(0) != npos || sin.shape(1) != D / 2)
    throw py::value_error("cos/sin must be [positions, D/2]");
  if (p + max_dep > npos) throw py::value_error("cos/sin do not cover every row position");
  if (p + max_dep >= INT_MAX / 2) throw py::value_error("sequence too long");
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

  auto run = [&](auto& P) {
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
    py::gil_scoped_release release;
    body(P);
  };
  if (t.tv[0].bf16) {
    Problem<uint16_t> P;
    for (int n = 0; n < 4; ++n) P.tab[n] = static_cast<const uint16_t*>(t.tv[n].ptr);
    run(P);
  } else {
    Problem<float> P;
    for (int n = 0; n < 4; ++n) P.tab[n] = static_cast<const float*>(t.tv[n].ptr);
    run(P);
  }
}

}  // namespace rows
}  // namespace l0score
