// The pieces of the gate arithmetic: loads and stores of a chunk's columns a vector at a time
// (float32 or bfloat16 storage; Whole, Part), tanh and sigmoid as XLA:CPU computes them, and
// for_columns over a chunk's units.
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "micro_kernel.h"

namespace {

// The columns of a chunk that one vector of the gate arithmetic covers: a whole vector at
// column j (Whole), or the chunk's last n < VW columns (Part) where its units are not a whole
// number of vectors. A Part loads its n floats (the other lanes read zero) and stores its n
// alone: the columns past it are another chunk's, which another thread may be writing. It was
// a loop of single floats once, whose rational approximations cost a chunk of 15 units more
// than the whole vector body (docs/performance/design.md, "Hidden sizes that are not whole
// vectors").
struct Whole {
  int64_t j;
};
struct Part {
  int64_t j;
  int64_t n;
};

#if defined(__AVX512F__)
inline __mmask16 lane_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }
#endif

// Loads and stores of those columns in float32 (vec) or bfloat16 storage; bfloat16 is widened
// exactly on load and rounded to nearest even on store (as XLA's conversion does, NaN kept a
// NaN), so that h matches the lax.scan path's h.astype(bf16).
inline vec load(const float* p, Whole at) { return *reinterpret_cast<const vec_u*>(p + at.j); }
inline void store(float* p, Whole at, vec v) { *reinterpret_cast<vec_u*>(p + at.j) = v; }
inline vec load(const float* p, Part at) {
#if defined(__AVX512F__)
  return (vec)_mm512_maskz_loadu_ps(lane_mask(at.n), p + at.j);
#else
  vec v{};
  std::memcpy(&v, p + at.j, at.n * sizeof(float));
  return v;
#endif
}
inline void store(float* p, Part at, vec v) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p + at.j, lane_mask(at.n), (__m512)v);
#else
  std::memcpy(p + at.j, &v, at.n * sizeof(float));
#endif
}
typedef uint32_t uvec __attribute__((vector_size(VW * 4)));
typedef uint16_t hvec __attribute__((vector_size(VW * 2)));

// The columns that a Whole or a Part covers.
inline int64_t lanes(Whole) { return VW; }
inline int64_t lanes(Part at) { return at.n; }

template <typename At>
inline vec load(const bf16* p, At at) {
  hvec v{};
  std::memcpy(&v, p + at.j, lanes(at) * sizeof(bf16));
  return (vec)(__builtin_convertvector(v, uvec) << 16);
}
template <typename At>
inline void store(bf16* p, At at, vec v) {
  const uvec u = (uvec)v;
  const uvec rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uvec r = (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded;
  const hvec h = __builtin_convertvector(r, hvec);
  std::memcpy(p + at.j, &h, lanes(at) * sizeof(bf16));
}

// A vector of x in every lane.
template <typename V>
inline V splat(float x) {
  return V{} + x;
}

// tanh as Eigen's (and XLA:CPU's) rational approximation: branch-free, so it vectorises.
template <typename V>
inline V tanh_approx(V x) {
  const V c = splat<V>(7.90531110763549805f);
  const V lo = -c;
  V xc = x < lo ? lo : x;
  xc = xc > c ? c : xc;
  const V x2 = xc * xc;
  V p = splat<V>(-2.76076847742355e-16f);
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * xc;
  V q = splat<V>(1.19825839466702e-06f);
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  const V tiny = splat<V>(0.0004f);
  const V ax = x < V{} ? -x : x;
  return ax < tiny ? x : p / q;
}

template <typename V>
inline V sigmoid_approx(V x) {
  return 0.5f * tanh_approx<V>(0.5f * x) + 0.5f;
}

// Calls body(at) over the columns [0, n): a Whole for each whole vector, then a Part for the
// rest.
template <typename Body>
inline void for_columns(int64_t n, Body&& body) {
  int64_t j = 0;
  for (; j + VW <= n; j += VW) body(Whole{j});
  if (j < n) body(Part{j, n - j});
}

}  // namespace
