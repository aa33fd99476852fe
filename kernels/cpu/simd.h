// Portable 16-lane float vectors (GCC/Clang vector extensions): one zmm register where the host has
// AVX-512, split by the compiler into ymm/xmm halves otherwise. No intrinsics, so the same source
// builds with -march=native and with the portable flags (L0SCORE_PORTABLE=1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace l0score {

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4)));  // unaligned access
typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_u __attribute__((vector_size(32), aligned(4)));

constexpr int LANES = 16;
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

static inline v16f vload(const float* p) { return *reinterpret_cast<const v16f_u*>(p); }
static inline void vstore(float* p, v16f v) { *reinterpret_cast<v16f_u*>(p) = v; }
static inline v8f vload8(const float* p) { return *reinterpret_cast<const v8f_u*>(p); }
static inline void vstore8(float* p, v8f v) { *reinterpret_cast<v8f_u*>(p) = v; }
static inline v16f vsplat(float x) { return v16f{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
static inline v8f vsplat8(float x) { return v8f{x, x, x, x, x, x, x, x}; }
static inline v16f vsel(v16i mask, v16f a, v16f b) { return mask ? a : b; }
static inline v16f vmax(v16f a, v16f b) { return a > b ? a : b; }
static inline v16f vabs(v16f a) { return (v16f)((v16i)a & 0x7fffffff); }
static inline v16i lane_ids() { return v16i{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define L0_SHUF(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
// Horizontal reductions in log2(16) shuffle steps.
static inline float hsum(v16f v) {
  v += L0_SHUF(v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += L0_SHUF(v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  v += L0_SHUF(v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  v += L0_SHUF(v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return v[0];
}
static inline float hmax(v16f v) {
  v = vmax(v, L0_SHUF(v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = vmax(v, L0_SHUF(v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = vmax(v, L0_SHUF(v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  v = vmax(v, L0_SHUF(v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
  return v[0];
}
static inline v8f low_half(v16f v) { return L0_SHUF(v, 0, 1, 2, 3, 4, 5, 6, 7); }
// In-register 8x8 transpose: r[i][j] -> r[j][i].
static inline void transpose8(v8f r[8]) {
  v8f t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[2 * i + 1] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 2; ++k) {
      u[4 * i + 2 * k] = __builtin_shufflevector(t[4 * i + k], t[4 * i + 2 + k], 0, 1, 8, 9, 4, 5, 12, 13);
      u[4 * i + 2 * k + 1] = __builtin_shufflevector(t[4 * i + k], t[4 * i + 2 + k], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int j = 0; j < 4; ++j) {
    r[j] = __builtin_shufflevector(u[j], u[4 + j], 0, 1, 2, 3, 8, 9, 10, 11);
    r[4 + j] = __builtin_shufflevector(u[j], u[4 + j], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}
#undef L0_SHUF
#else
static inline v8f low_half(v16f v) { return v8f{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]}; }
static inline void transpose8(v8f r[8]) {
  float m[8][8];
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) m[j][i] = r[i][j];
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) r[i][j] = m[i][j];
}
static inline float hsum(v16f v) {
  float s = 0.f;
  for (int i = 0; i < LANES; ++i) s += v[i];
  return s;
}
static inline float hmax(v16f v) {
  float m = v[0];
  for (int i = 1; i < LANES; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
#endif

// exp(x) for x <= 0 (arguments are logits minus their row max): Cephes' expf polynomial after
// range reduction x = n ln2 + r, |r| <= ln2/2; relative error < 2e-7 on [-87, 0]. Arguments below
// -87 are clamped there (the result, < 2e-38, is invisible next to the row max's exp(0) = 1).
static inline v16f vexp(v16f x) {
  x = vmax(x, vsplat(-87.0f));
  const v16f magic = vsplat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const v16f t = x * 1.44269504088896341f + magic;
  const v16i n = (v16i)t - (v16i)magic;
  const v16f nf = t - magic;
  v16f r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  v16f p = vsplat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const v16f y = p * (r * r) + r + 1.0f;
  return y * (v16f)((n + 127) << 23);
}

// log(x) for finite x > 0: Cephes' logf polynomial after splitting x = m 2^e, m in [sqrt(1/2), sqrt(2));
// relative error < 2e-7 on normal inputs.
static inline v16f vlog(v16f x) {
  v16i e = (((v16i)x >> 23) & 0xff) - 126;
  v16f m = (v16f)(((v16i)x & 0x807fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const v16i small = m < 0.70710678f;
  e = e + small;  // small lanes: -1 (true) moves e down by one
  m = vsel(small, m + m, m) - 1.0f;
  const v16f z = m * m;
  v16f y = vsplat(7.0376836292e-2f);
  y = y * m + -1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m + -1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m + -1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m + -2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const v16f ef = __builtin_convertvector(e, v16f);
  y += ef * -2.12194440e-4f;
  y += z * -0.5f;
  return m + y + ef * 0.693359375f;
}

// KL from dS (rows.h Soft): expm1(x) and f(x) = x + expm1(-x) = x^2/2 - x^3/6 + ... for
// |x| <= KL_SMALL (ln2 / 2), Taylor polynomials without range reduction (truncation < 3e-8
// relative there; beyond it the callers take another branch).
constexpr float KL_SMALL = 0.3465735902799727f;
// One body for a float and for 16 lanes (v16f's arithmetic with a float operand broadcasts it).
template <class T>
static inline T expm1_small(T x) {
  T p = T{} + 1.f / 5040.f;
  p = p * x + 1.f / 720.f;
  p = p * x + 1.f / 120.f;
  p = p * x + 1.f / 24.f;
  p = p * x + 1.f / 6.f;
  p = p * x + 0.5f;
  return (p * x) * x + x;
}
template <class T>
static inline T kl_f_small(T x) {
  T p = T{} + 1.f / 40320.f;
  p = p * x - 1.f / 5040.f;
  p = p * x + 1.f / 720.f;
  p = p * x - 1.f / 120.f;
  p = p * x + 1.f / 24.f;
  p = p * x - 1.f / 6.f;
  p = p * x + 0.5f;
  return (p * x) * x;
}

// log1p(y) - y for y > -1, accurate relative to the result (~ -y^2/2) for small |y|: with
// z = y / (2 + y), log1p(y) = 2 atanh(z) and 2z - y = -y z, so log1p(y) - y =
// -y z + 2 z^3 (1/3 + z^2/5 + z^4/7 + z^6/9) (|y| < 1/4: truncation < 1e-9 relative); else
// vlog(1 + y) - y (only computed when some lane needs it).
static inline v16f vlog1p_minus(v16f y) {
  const v16i small = vabs(y) < 0.25f;
  const v16f ys = vsel(small, y, v16f{});
  const v16f z = ys / (ys + 2.0f), z2 = z * z;
  v16f r = (((z2 * (1.f / 9.f) + 1.f / 7.f) * z2 + 1.f / 5.f) * z2 + 1.f / 3.f) * (2.f * z * z2) - ys * z;
  if (hmax(vabs(y)) >= 0.25f) r = vsel(small, r, vlog(y + 1.0f) - y);
  return r;
}

// bf16 <-> fp32. bf16 values are stored as their raw 16 bits (torch.bfloat16 viewed as int16).
static inline float bf16_to_f32(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even, as torch's float32 -> bfloat16 cast does (inputs are finite).
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// A 64-byte aligned float buffer that only grows.
class AlignedBuf {
 public:
  AlignedBuf() = default;
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  ~AlignedBuf() { std::free(ptr_); }
  float* get(size_t n) {
    if (n > cap_) {
      std::free(ptr_);
      size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
      ptr_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!ptr_) throw std::bad_alloc();
      cap_ = n;
    }
    return ptr_;
  }
  // Grows zero-filled, so never-written tail lanes hold zeros rather than arbitrary bits.
  float* get_clean(size_t n) {
    if (n > cap_) {
      get(n);
      std::memset(ptr_, 0, cap_ * sizeof(float));
    }
    return ptr_;
  }
  float* zeroed(size_t n) {
    float* p = get(n);
    std::memset(p, 0, n * sizeof(float));
    return p;
  }

 private:
  float* ptr_ = nullptr;
  size_t cap_ = 0;
};

}  // namespace l0score
