// The float32 weight and input gradients over the valid steps (weight_grads, input_grad), and
// a transposed copy for the bfloat16 weight gradients that stay in XLA (transpose).
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "batch.h"
#include "buffers.h"
#include "gemm.h"
#include "work_items.h"

namespace {

// The weight and input gradients (float32), over the valid steps only: dW_ih = Σ dz_sᵀ·x_s,
// dW_hh = Σ dz_sᵀ·h_{s-1} over the steps s = (t, n) whose mask is set (every step without a
// mask), and dx_s = dz_s·W_ih there (zero at the others, where dz is zero). XLA's GEMMs compute
// the same over all T·N steps, most of them padding in a ragged batch, and first copy [x, h] into
// fresh buffers.
//
// The weight gradients are one GEMM, dW = Σ_s dz_sᵀ·[x_s, h_{s-1}], whose contraction runs over
// the valid steps: blocks of kWgK of them, in order (t-major), so every sum is taken in the
// same order whatever the number of threads. For each block, [x_s, h_{s-1}] is packed into
// panels of NR columns (x's panels, then h's, each zero-padded), by a row of items, one per
// direction and block; then a row of items, one per direction and block of gate rows (at most
// kWgRows: wg_block_slivers), copies its gate columns of the block's dz into MR-wide slivers and
// adds the products into its rows of a float32 accumulator (wg_micro), which the last block's
// items copy out. The packed panels of a few blocks (a superblock, at most about 4 MiB) are made
// at a time. Neither the panels nor the accumulator are zeroed on the calling thread before the
// team starts: each item zeroes its own rows of the accumulator (megabytes zeroed by the caller
// alone were idle time for the rest of the team: docs/performance/design.md, "Setup on the
// calling thread").
// The input gradient is a call of its own (input_grad), which XLA leaves out where nothing
// needs it (the first layer's input is data).

constexpr int64_t kWgK = 256, kWgRows = 8 * MR, kDxSteps = 4;
constexpr int64_t kWgPackBytes = int64_t{4} << 20, kPrefetch = 8;

// The slivers of MR gate rows that hold `rows` of them: a last block of gate rows (4H not a
// multiple of the block's rows) has fewer.
constexpr int64_t slivers(int64_t rows) { return (rows + MR - 1) / MR; }

// Slivers per block of gate rows, for G4 gate rows and D directions on `threads` threads: the
// items of a row (a block of gate rows of a direction each) hold kWgRows rows, or fewer where
// fewer leave the busiest thread fewer slivers (ties: the larger blocks); at least two slivers,
// a cache line of dz's gate columns a step (gather_dz_slivers). The weight gradients take every
// usable CPU, not a thread per 16 units as the recurrence: at H16 one block of 64 rows kept them
// on one thread, where two of 32 share them (measured in docs/performance/design.md, "The weight
// gradients' blocks of gate rows").
inline int64_t wg_block_slivers(int64_t G4, int64_t D, int threads) {
  const int64_t all = slivers(G4);
  const auto busiest = [&](int64_t per) {
    const int64_t blocks = (all + per - 1) / per;
    return busiest_run(D * blocks, threads,
                       [&](int64_t i) { return std::min(per, all - i % blocks * per); });
  };
  int64_t best = kWgRows / MR;
  for (int64_t per = best - 1; per >= 2; --per)
    if (busiest(per) < busiest(best)) best = per;
  return best;
}

// out[0 : W] = the n floats at src, then zeros. A whole W is a copy of fixed size, which the
// compiler inlines as vector moves: a call of memcpy per piece cost 4% of weight_grads (perf).
template <int W>
inline void copy_padded(float* __restrict out, const float* __restrict src, int64_t n) {
  if (n == W) {
    std::memcpy(out, src, W * sizeof(float));
  } else {
    std::memcpy(out, src, n * sizeof(float));
    std::fill(out + n, out + W, 0.0f);
  }
}

// C[0 : MR, 0 : NR] (leading dimension ldc) += A·B: A holds K × MR (k-major), B a packed
// panel, K × NR. With Half, only the panel's first VW columns (a last panel of at most VW).
// micro's loop with another A: a sliver of dz gathered k-major (a k-step's MR values side by
// side), where micro reads whole rows of A in place, and C accumulated across blocks of steps.
template <bool Half>
inline void wg_micro(const float* __restrict A, const float* __restrict B, int64_t K,
                     float* __restrict C, int64_t ldc) {
  vec acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    acc0[i] = *reinterpret_cast<const vec_u*>(C + i * ldc);
    if constexpr (!Half) acc1[i] = *reinterpret_cast<const vec_u*>(C + i * ldc + VW);
  }
  for (int64_t k = 0; k < K; ++k) {
    const vec b0 = *reinterpret_cast<const vec_u*>(B + k * NR);
    vec b1 = b0;  // unused with Half
    if constexpr (!Half) b1 = *reinterpret_cast<const vec_u*>(B + k * NR + VW);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float a = A[k * MR + i];
      acc0[i] += a * b0;
      if constexpr (!Half) acc1[i] += a * b1;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    *reinterpret_cast<vec_u*>(C + i * ldc) = acc0[i];
    if constexpr (!Half) *reinterpret_cast<vec_u*>(C + i * ldc + VW) = acc1[i];
  }
}

// The weight gradients' GEMM laid out: its valid steps (the contraction), their blocks of kWgK
// and superblocks of `per` blocks, the panels of [x, h] (PI of x, then h's) and the blocks of
// kWgRows gate rows of the float32 accumulator (G4p rows of ldc columns per direction).
struct WeightGradLayout {
  int64_t D, N, I, H, G4;
  std::vector<int64_t> valid;  // the valid steps, t-major: t·N + n
  int64_t K, PI, P, ldc, grows, gblocks, G4p, blocks, per, supers;

  WeightGradLayout(const Dims& s, const int8_t* mask, int threads)
      : D(s.D), N(s.N), I(s.I), H(s.H), G4(4 * s.H) {
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t n = 0; n < N; ++n)
        if (mask == nullptr || mask[t * N + n] != 0) valid.push_back(t * N + n);
    K = static_cast<int64_t>(valid.size());
    PI = (I + NR - 1) / NR;
    P = PI + (H + NR - 1) / NR;
    ldc = P * NR;
    grows = MR * wg_block_slivers(G4, D, threads);
    gblocks = (G4 + grows - 1) / grows;
    G4p = gblocks * grows;
    blocks = (K + kWgK - 1) / kWgK;
    per = std::max<int64_t>(
        1, std::min<int64_t>(blocks, kWgPackBytes / (D * P * kWgK * NR * sizeof(float))));
    supers = (blocks + per - 1) / per;
  }
  // The row of valid step v in (T, D, N, ·) for direction d, and the steps of block b.
  int64_t row_of(int64_t v, int64_t d) const {
    const int64_t t = valid[v] / N, n = valid[v] % N;
    return (t * D + d) * N + n;
  }
  int64_t steps_in(int64_t b) const { return std::min(K, (b + 1) * kWgK) - b * kWgK; }
  // Whether panel p is the last of x's or h's and holds at most VW of their columns.
  bool half(int64_t p) const { return p < PI ? half_panel(I, p) : half_panel(H, p - PI); }
};

// Packs block b's [x_s, h_{s-1}] of direction d into its P panels at `out` (kWgK × NR each),
// sample by sample, whole rows of x and h: read in order, as the prefetchers like.
void pack_wg_block(const WeightGradLayout& L, int64_t d, int64_t b, const float* x,
                   const float* hs, const float* h0, float* out) {
  for (int64_t v = b * kWgK, e = v + L.steps_in(b); v < e; ++v) {
    const int64_t t = L.valid[v] / L.N, n = L.valid[v] % L.N, j = v - b * kWgK;
    const int64_t r = L.row_of(v, d);
    const float* xr = x + r * L.I;
    // h_{t-1}: h0 at the first step, else hs's row of the step before
    const float* hr = t == 0 ? h0 + (d * L.N + n) * L.H : hs + (r - L.D * L.N) * L.H;
    for (int64_t p = 0; p < L.P; ++p) {
      const bool is_x = p < L.PI;
      const int64_t c0 = (is_x ? p : p - L.PI) * NR;
      const int64_t cols = std::min<int64_t>(NR, (is_x ? L.I : L.H) - c0);
      copy_padded<NR>(out + p * kWgK * NR + j * NR, (is_x ? xr : hr) + c0, cols);
    }
  }
}

// Copies the gate columns [g0, g0 + rows) of block b's dz (direction d) into `a` as
// ceil(rows / MR) slivers, sliver q (rows g0 + q·MR …) kb × MR, k-major. Sample by sample:
// each reads its gate columns of dz in one piece, the next samples' fetched ahead (dz rows are
// far apart, which the prefetchers do not follow).
void gather_dz_slivers(const WeightGradLayout& L, int64_t d, int64_t b, int64_t g0, int64_t rows,
                       const float* dz, float* a) {
  const int64_t v0 = b * kWgK, kb = L.steps_in(b);
  for (int64_t v = 0; v < kb; ++v) {
    if (v + kPrefetch < kb)
      prefetch(dz + L.row_of(v0 + v + kPrefetch, d) * L.G4 + g0, rows * sizeof(float));
    const float* src = dz + L.row_of(v0 + v, d) * L.G4 + g0;
    for (int64_t q = 0; q < slivers(rows); ++q) {
      const int64_t r0 = q * MR, nr = std::clamp<int64_t>(rows - r0, 0, MR);
      copy_padded<MR>(a + q * kWgK * MR + v * MR, src + r0, nr);
    }
  }
}

// c[0 : rows, :] += a · the block's panels (kb steps), panel by panel (a half panel: its first VW
// columns), in slivers of MR rows.
void add_wg_block(const WeightGradLayout& L, const float* a, const float* panels, int64_t kb,
                  int64_t rows, float* c) {
  for (int64_t p = 0; p < L.P; ++p) {
    const float* bp = panels + p * kWgK * NR;
    const auto micro = L.half(p) ? wg_micro<true> : wg_micro<false>;
    for (int64_t q = 0; q < slivers(rows); ++q)
      micro(a + q * kWgK * MR, bp, kb, c + q * MR * L.ldc + p * NR, L.ldc);
  }
}

void weight_grads(const Dims& s, ffi::ThreadPool& pool, int threads, const float* dz,
                  const float* x, const float* hs, const float* h0, const int8_t* mask,
                  float* dw_ih, float* dw_hh) {
  const WeightGradLayout L(s, mask, threads);
  const int64_t D = L.D, I = L.I, H = L.H, G4 = L.G4;
  if (L.K == 0) {
    std::fill(dw_ih, dw_ih + D * G4 * I, 0.0f);
    std::fill(dw_hh, dw_hh + D * G4 * H, 0.0f);
    return;
  }
  const Unzeroed<float> acc(static_cast<size_t>(D * L.G4p * L.ldc));
  const Unzeroed<float> packed(static_cast<size_t>(D * L.per * L.P * kWgK * NR));
  const auto panels = [&](int64_t d, int64_t j) {  // block j of the superblock, direction d
    return packed.data() + (d * L.per + j) * L.P * kWgK * NR;
  };
  // Rows of items: for each superblock, its blocks packed (one item per direction and block),
  // then its products added (one item per direction and block of gate rows).
  const int64_t chunks = std::max(D * L.per, D * L.gblocks);
  run_items(pool, threads, Prefault({}), 2 * L.supers, chunks,
            [&](int64_t row, int64_t k, Scratch& scratch) {
    const int64_t sb = row / 2, b0 = sb * L.per, b1 = std::min(L.blocks, b0 + L.per);
    if (row % 2 == 0) {
      const int64_t d = k / L.per, b = b0 + k % L.per;
      if (d < D && b < b1) pack_wg_block(L, d, b, x, hs, h0, panels(d, b - b0));
      return;
    }
    if (k >= D * L.gblocks) return;
    const int64_t d = k / L.gblocks, g0 = (k % L.gblocks) * L.grows;
    const int64_t rows = std::min(L.grows, G4 - g0);  // gate rows here; the rest is padding
    float* a = scratch.get(static_cast<size_t>(kWgRows * kWgK));
    float* c = acc.data() + (d * L.G4p + g0) * L.ldc;
    if (sb == 0) std::fill_n(c, slivers(rows) * MR * L.ldc, 0.0f);  // the rows add_wg_block adds to
    for (int64_t b = b0; b < b1; ++b) {
      gather_dz_slivers(L, d, b, g0, rows, dz, a);
      add_wg_block(L, a, panels(d, b - b0), L.steps_in(b), rows, c);
    }
    if (sb == L.supers - 1) {  // the last superblock: this block of gate rows is complete
      for (int64_t g = 0; g < rows; ++g) {
        std::memcpy(dw_ih + (d * G4 + g0 + g) * I, c + g * L.ldc, I * sizeof(float));
        std::memcpy(dw_hh + (d * G4 + g0 + g) * H, c + g * L.ldc + L.PI * NR, H * sizeof(float));
      }
    }
  });
}

// dx = dz·W_ih on the valid rows, zero on the others: a row of items that pack W_ih, a panel
// each, then items of kDxSteps steps, each step one GEMM of its valid rows of dz (through a list
// of rows) with the packed W_ih.
void input_grad(const Dims& s, ffi::ThreadPool& pool, int threads, const float* dz,
                const float* w_ih, const int8_t* mask, float* dx) {
  const int64_t T = s.T, D = s.D, N = s.N, I = s.I, H = s.H, G4 = 4 * H;
  const int64_t PI = (I + NR - 1) / NR;
  const int64_t wp = panel_size<float>(G4) * PI;  // elements of packed W_ih per direction
  const Unzeroed<float> bw(static_cast<size_t>(D * wp));
  const int64_t groups = (T + kDxSteps - 1) / kDxSteps;
  const Prefault prefault({{dx, static_cast<size_t>(T * D * N * I) * sizeof(float)}});
  const int64_t chunks = D * std::max(PI, groups);
  run_items(pool, threads, prefault, 2, chunks, [&](int64_t row, int64_t k, Scratch& scratch) {
    if (row == 0) {  // panel k % PI of direction k / PI
      const int64_t d = k / PI, c0 = k % PI * NR;
      if (d < D)
        pack_cols(w_ih + d * G4 * I, G4, I, c0, std::min<int64_t>(NR, I - c0),
                  bw.data() + d * wp + k % PI * panel_size<float>(G4));
      return;
    }
    if (k >= D * groups) return;
    const int64_t d = k / groups, t0 = (k % groups) * kDxSteps;
    float* c = scratch.get(static_cast<size_t>(N * PI * NR));
    int32_t* rows = scratch.get_rows<int32_t>(static_cast<size_t>(N));
    for (int64_t t = t0; t < std::min(T, t0 + kDxSteps); ++t) {
      int64_t m = 0;
      for (int64_t n = 0; n < N; ++n) {
        if (mask == nullptr || mask[t * N + n] != 0) {
          rows[m++] = static_cast<int32_t>(n);
        } else {
          std::fill_n(dx + ((t * D + d) * N + n) * I, I, 0.0f);
        }
      }
      if (m == 0) continue;
      const Product<float> prod{dz + (t * D + d) * N * G4, G4, static_cast<int>(G4),
                                bw.data() + d * wp, mask == nullptr ? nullptr : rows};
      gemm_packed(m, I, &prod, 1, c, PI * NR);
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(dx + ((t * D + d) * N + rows[i]) * I, c + i * PI * NR, I * sizeof(float));
    }
  });
}

// A transposed copy of a row-major R × C matrix. XLA:CPU turns a transpose into a layout: a
// GEMM operand that is a transposed array stays column-major, and XLA then runs a bfloat16
// GEMM as a float32 one, converting both operands first. The weight gradients, [x, h]ᵀ·dz
// summed over steps and sequences, need one operand transposed: this copy keeps them bfloat16.
// Items are tiles of 64 output rows, shared by the team.

template <typename E>
void transpose(ffi::ThreadPool& pool, int threads, const E* in, int64_t R, int64_t C, E* out) {
  constexpr int64_t kTile = 64;
  const Prefault prefault({{out, static_cast<size_t>(R * C) * sizeof(E)}});
  run_items(pool, threads, prefault, 1, (C + kTile - 1) / kTile,
            [&](int64_t, int64_t k, Scratch&) {
              const int64_t c0 = k * kTile, c1 = std::min(C, c0 + kTile);
              for (int64_t r0 = 0; r0 < R; r0 += kTile) {
                const int64_t r1 = std::min(R, r0 + kTile);
                for (int64_t c = c0; c < c1; ++c)
                  for (int64_t r = r0; r < r1; ++r) out[c * R + r] = in[r * C + c];
              }
            });
}

}  // namespace
