// The register-blocked GEMM micro-kernel: the vector width and block sizes of the instruction
// set, the layout of a packed panel of B (float32, or pairs of bfloat16 K-steps), Product (one
// A·B of a GEMM) and micro, a block of M rows of C over P panels.
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "config.h"

namespace {

// Floats per vector: a register's (16 with AVX-512; the bfloat16 emulation's vectors are as
// wide, each two AVX2 registers), and the rows of the GEMM micro-kernel: 2·MR accumulators + 2
// + 1 registers.
#if defined(__AVX512F__) || FLAX_LSTM_BF16 == 2
#define FLAX_LSTM_VW 16
constexpr int MR = 8;
#else
#define FLAX_LSTM_VW 8
constexpr int MR = 6;
#endif
constexpr int VW = FLAX_LSTM_VW;
constexpr int NR = 2 * VW;  // columns of a packed panel of B

constexpr int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Whether panel p of a matrix of `cols` columns is its last and holds at most VW of them: a half
// panel, which the GEMMs compute as one vector (the Half forms below; docs/performance/design.md,
// "The last chunk's columns: half panels").
constexpr bool half_panel(int64_t cols, int64_t p) { return cols - p * NR <= VW; }

typedef float vec __attribute__((vector_size(VW * 4)));
typedef float vec_u __attribute__((vector_size(VW * 4), aligned(4)));  // unaligned access

// bfloat16 as stored by XLA (the upper half of a float32's bits).
using bf16 = uint16_t;

// K-steps per packed row of a panel: a float each, or a pair of bfloat16s side by side (the
// operand of vdpbf16ps, and the rows of an AMX tile of B).
template <typename E>
constexpr int kPair = sizeof(E) == 2 ? 2 : 1;

// A bfloat16 panel holds K rounded up to a multiple of 32, the K of an AMX tile, zero rows past
// K, so that the tile GEMM (amx.h) loads whole tiles of it and never reads past it; the
// vdpbf16ps micro-kernel reads only the first K rows. A float32 panel holds K rows.
template <typename E>
constexpr int kPanelK = sizeof(E) == 2 ? 32 : 1;

// Elements of a packed panel of K rows, and where element (k, j) of a panel goes in it: row
// k / kPair, a pair of K-steps per column for bfloat16 (NR·kPair elements a row).
template <typename E>
constexpr int64_t panel_size(int64_t K) {
  return round_up(K, kPanelK<E>) * NR;
}
template <typename E>
constexpr int64_t panel_at(int64_t k, int64_t j) {
  return (k / kPair<E>) * NR * kPair<E> + j * kPair<E> + k % kPair<E>;
}

// One product A · B of a GEMM: A is M × K with leading dimension lda, Bp holds the packed
// panels of B (panel_size(K) elements each, one after the other). A sum of two products
// shares the output. With `rows`, row i of A is row rows[i] of the matrix at A (the active
// rows of a ragged batch, in order of length; see Order).
template <typename E>
struct Product {
  const E* A;
  int64_t lda;
  int K;
  const E* Bp;
  const int32_t* rows = nullptr;
};

// Keeps a loaded vector in a register. Without it GCC folds the loads of B into each
// multiply-add for a few rows (up to 4), loading every vector of B once per row: that halved
// the micro-kernel's speed at 2 to 4 rows (docs/performance/design.md, "Tuning per CPU").
template <typename V>
inline void in_register(V& v) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__AVX__)
#if defined(__AVX512F__)
  constexpr size_t kRegisterBytes = 64;
#else
  constexpr size_t kRegisterBytes = 32;
#endif
  if constexpr (sizeof(V) <= kRegisterBytes) asm("" : "+v"(v));  // it fits one register
#else
  (void)v;
#endif
}

// Panels of B that one micro-kernel call takes side by side for a block of M rows. A block of
// 1 or 2 rows has 2·M sums per panel, too few chains to cover the multiply-add latency, and
// with one row each vector of B brought from L2 feeds a single multiply-add; two panels at once
// give each k-step twice the independent sums. Measured on AMD Zen 3 (AVX2); 3 rows with two
// panels spill registers and ran slower (docs/performance/design.md, "Short row blocks on
// AVX2"). AVX-512 builds keep one panel, as measured on Zen 5: the form with more panels has
// not run on such a CPU.
constexpr int panels_at_once(int M) {
#if defined(__AVX512F__)
  return (void)M, 1;
#else
  return M <= 2 ? 2 : 1;
#endif
}

// acc[j] += A · B_j for the M rows of A at a[0], …, a[M - 1] (K elements each) and P panels
// B_0 … B_{P-1}. Each row's sum runs over k in order whatever M and P are, so a row's result
// does not depend on the rows beside it (a sharded or ragged batch gives the same bits;
// tests/test_sharding.py): splitting K over more accumulators at 1 to 3 rows was faster
// (docs/performance/design.md) but broke that.
// With Half, only the panels' first VW columns (acc0): a last panel of at most VW columns.
template <int M, int P, bool Half>
inline void accumulate(vec (&acc0)[P][M], vec (&acc1)[P][M], const float* const (&A)[M], int K,
                       const float* const (&B)[P]) {
  for (int k = 0; k < K; ++k) {
#pragma GCC unroll 4
    for (int j = 0; j < P; ++j) {
      vec b0 = *reinterpret_cast<const vec_u*>(B[j] + k * NR);
      vec b1 = b0;  // unused with Half
      if constexpr (!Half) b1 = *reinterpret_cast<const vec_u*>(B[j] + k * NR + VW);
      if constexpr (M <= 4) {  // more rows compile as they always did
        in_register(b0);
        if constexpr (!Half) in_register(b1);
      }
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) {
        const float a = A[i][k];
        acc0[j][i] += a * b0;
        if constexpr (!Half) acc1[j][i] += a * b1;
      }
    }
  }
}

#if FLAX_LSTM_BF16
// VW pairs of bfloat16 K-steps (a pair is 32 bits, the lower K-step in its low half), and
// acc + the products of the pairs in a and b, summed in float32: vdpbf16ps, or in the
// emulation build the same sums in software, in its order (the upper K-step's product first).
// A product of two bfloat16s is exact in float32; the emulation keeps subnormals, which
// vdpbf16ps flushes to zero.
#if FLAX_LSTM_BF16 == 1
using pairs = __m512bh;
inline pairs load_pairs(const bf16* p) { return (__m512bh)_mm512_loadu_si512(p); }
inline pairs splat_pair(uint32_t pair) {
  return (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
}
inline vec dot_pairs(vec acc, pairs a, pairs b) {
  return (vec)_mm512_dpbf16_ps((__m512)acc, a, b);
}
#else
typedef uint32_t pairs __attribute__((vector_size(VW * 4)));
inline pairs load_pairs(const bf16* p) {
  pairs v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline pairs splat_pair(uint32_t pair) { return pairs{} + pair; }
inline vec dot_pairs(vec acc, pairs a, pairs b) {
  const pairs upper = pairs{} + 0xffff0000u;
  acc = acc + (vec)(a & upper) * (vec)(b & upper);
  return acc + (vec)(a << 16) * (vec)(b << 16);
}
#endif

// The same with bfloat16 operands: each dot_pairs adds the products of two K-steps (a pair of
// A broadcast against pairs of B) to float32 accumulators. An odd last K-step pairs A's value
// with a zero (B is zero-padded there), so A is never read past its row.
template <int M, int P, bool Half>
inline void accumulate(vec (&acc0)[P][M], vec (&acc1)[P][M], const bf16* const (&A)[M], int K,
                       const bf16* const (&B)[P]) {
  const auto step = [&](int k, auto a_at) {
#pragma GCC unroll 4
    for (int j = 0; j < P; ++j) {
      const pairs b0 = load_pairs(B[j] + k * NR);
      pairs b1 = b0;  // unused with Half
      if constexpr (!Half) b1 = load_pairs(B[j] + k * NR + 2 * VW);
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) {
        const pairs a = splat_pair(a_at(A[i] + k));
        acc0[j][i] = dot_pairs(acc0[j][i], a, b0);
        if constexpr (!Half) acc1[j][i] = dot_pairs(acc1[j][i], a, b1);
      }
    }
  };
  int k = 0;
  for (; k + 2 <= K; k += 2) {
    step(k, [](const bf16* p) {
      uint32_t pair;
      std::memcpy(&pair, p, sizeof pair);
      return pair;
    });
  }
  if (k < K) step(k, [](const bf16* p) { return static_cast<uint32_t>(*p); });
}
#endif

// C[i0 : i0 + M, panels p … p + P - 1] = Σ over the products of A[i0 : i0 + M, :] · those
// panels of B; with Half, only each panel's first VW columns.
template <int M, int P, bool Half, typename E>
inline void micro(const Product<E>* prods, int nprod, int64_t i0, int64_t p, float* __restrict C,
                  int64_t ldc) {
  vec acc0[P][M], acc1[P][M];
#pragma GCC unroll 4
  for (int j = 0; j < P; ++j) {
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      acc0[j][i] = vec{};
      acc1[j][i] = vec{};
    }
  }
  for (int q = 0; q < nprod; ++q) {
    const Product<E>& pr = prods[q];
    const E* a[M];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i)
      a[i] = pr.A + (pr.rows == nullptr ? i0 + i : pr.rows[i0 + i]) * pr.lda;
    const E* b[P];
#pragma GCC unroll 4
    for (int j = 0; j < P; ++j) b[j] = pr.Bp + (p + j) * panel_size<E>(pr.K);
    accumulate<M, P, Half>(acc0, acc1, a, pr.K, b);
  }
#pragma GCC unroll 4
  for (int j = 0; j < P; ++j) {
    float* c = C + i0 * ldc + (p + j) * NR;
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      *reinterpret_cast<vec_u*>(c + i * ldc) = acc0[j][i];
      if constexpr (!Half) *reinterpret_cast<vec_u*>(c + i * ldc + VW) = acc1[j][i];
    }
  }
}

// One block of M rows over panels [p0, p1): panels_at_once(M) panels a call, then one at a time;
// with Half, the panels' first VW columns, one panel at a time.
template <int M, bool Half, typename E>
inline void row_block(int64_t p0, int64_t p1, const Product<E>* prods, int nprod, int64_t i0,
                      float* C, int64_t ldc) {
  constexpr int P = Half ? 1 : panels_at_once(M);
  int64_t p = p0;
  if constexpr (P > 1)
    for (; p + P <= p1; p += P) micro<M, P, Half>(prods, nprod, i0, p, C, ldc);
  for (; p < p1; ++p) micro<M, 1, Half>(prods, nprod, i0, p, C, ldc);
}

// row_block for a block of `rows` rows, 1 ≤ rows ≤ M.
template <int M, bool Half = false, typename E>
inline void row_block_of(int rows, int64_t p0, int64_t p1, const Product<E>* prods, int nprod,
                         int64_t i0, float* C, int64_t ldc) {
  if constexpr (M > 0) {
    if (rows == M) return row_block<M, Half>(p0, p1, prods, nprod, i0, C, ldc);
    return row_block_of<M - 1, Half>(rows, p0, p1, prods, nprod, i0, C, ldc);
  }
}

// Rows of gemm_packed's next row block when `left` rows remain: the rows split as evenly as the
// fewest blocks of at most MR allow. With AVX2, 16 rows as 6 + 5 + 5, 32 as 6 + 6 + 5 + 5 + 5 +
// 5 (where that would leave blocks of 4 rows or fewer, gemm_packed takes the last rows apart
// first: rest_in_pairs): a short block has too few sums for the multiply-add latency, 1 to 3
// rows on Zen 3 and 4 rows on Zen 2, where 4 rows ran at 0.8× of 5 or 6 (docs/performance/
// design.md, "Short row blocks on AVX2" and "Even row blocks on Zen 2"). With AVX-512, 9 rows
// as 5 + 4 and 17 as 6 + 6 + 5 rather than a last block of one row, which reads each vector of
// B from L2 for two multiply-adds (measured on Zen 4: "Even row blocks on AVX-512").
constexpr int64_t next_block(int64_t left) {
  const int64_t blocks = (left + MR - 1) / MR;
  return (left + blocks - 1) / blocks;
}

// Rows at the end of a GEMM of M rows that gemm_packed takes over pairs of panels, two blocks
// of 1 or 2 rows' sums a k-step (row_block's panels_at_once), instead of sharing an even split
// whose blocks would have 4 rows or fewer: with AVX2, 8 rows as 6 + 2 (2 over pairs of panels)
// rather than 4 + 4, 7 as 6 + 1, and 13, 14 and 19 likewise. On Zen 2, 6 rows run at 105
// GFLOP/s, 2 over pairs of panels at 79, 4 at 82 (docs/performance/design.md, "Even row blocks
// on Zen 2"). AVX-512 keeps its blocks of up to 8 rows.
constexpr int64_t rest_in_pairs(int64_t M) {
#if !defined(__AVX512F__)
  const int64_t blocks = (M + MR - 1) / MR;
  if (M > MR && M / blocks <= 4 && M % MR <= 2) return M % MR;
#endif
  return (void)M, 0;
}

}  // namespace
