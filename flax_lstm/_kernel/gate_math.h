// The pieces of the gate arithmetic: loads and stores that read the same for a float and a
// vector (float32 or bfloat16 storage), tanh and sigmoid as XLA:CPU computes them, and
// for_columns over a chunk's units.
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "micro_kernel.h"

namespace {

// Loads, stores and broadcasts that read the same for a float and for a vector of VW floats,
// so that one template of the gate arithmetic serves the vector body and the scalar tail.
template <typename V>
inline V load(const float* p) {
  if constexpr (sizeof(V) == sizeof(float)) {
    return *p;
  } else {
    return *reinterpret_cast<const vec_u*>(p);
  }
}
template <typename V>
inline void store(float* p, V v) {
  if constexpr (sizeof(V) == sizeof(float)) {
    *p = v;
  } else {
    *reinterpret_cast<vec_u*>(p) = v;
  }
}
template <typename V>
inline V splat(float x) {
  return V{} + x;
}

// The same for bfloat16 storage: widened exactly on load, rounded to nearest even on store (as
// XLA's conversion does, NaN kept a NaN), so that h matches the lax.scan path's h.astype(bf16).
typedef uint32_t uvec __attribute__((vector_size(VW * 4)));
typedef uint16_t hvec __attribute__((vector_size(VW * 2)));

template <typename V>
inline V load(const bf16* p) {
  if constexpr (sizeof(V) == sizeof(float)) {
    return std::bit_cast<float>(static_cast<uint32_t>(*p) << 16);
  } else {
    hvec v;
    std::memcpy(&v, p, sizeof v);
    return (V)(__builtin_convertvector(v, uvec) << 16);
  }
}
template <typename V>
inline void store(bf16* p, V v) {
  if constexpr (sizeof(V) == sizeof(float)) {
    const uint32_t u = std::bit_cast<uint32_t>(v);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    *p = static_cast<bf16>((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
  } else {
    const uvec u = (uvec)v;
    const uvec rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uvec r = (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded;
    const hvec h = __builtin_convertvector(r, hvec);
    std::memcpy(p, &h, sizeof h);
  }
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

// Calls body.template operator()<V>(j) over j in [0, n): vectors of VW, then single floats.
template <typename Body>
inline void for_columns(int64_t n, Body&& body) {
  int64_t j = 0;
  for (; j + VW <= n; j += VW) body.template operator()<vec>(j);
  for (; j < n; ++j) body.template operator()<float>(j);
}

}  // namespace
