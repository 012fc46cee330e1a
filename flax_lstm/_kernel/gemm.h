// gemm_packed, C = Σ A·B over packed panels of B (on the micro-kernel, or on AMX tiles), and
// the packing of weights into panels (pack_rows, pack_cols).
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "amx.h"
#include "micro_kernel.h"

namespace {

// C (M × cols, leading dimension ldc) = the sum of the products, panel by panel: every row block
// of A passes over the same panel of B, which stays in L1 or L2 (blocking K to fit L1 measured
// slower: docs/performance/design.md, "Tuning per CPU"). The panels hold round_up(cols, NR)
// columns; C's columns past `cols` up to that may be written (ldc and C's rows leave room). A
// last panel whose columns fit one vector is computed as one (a chunk's last units, where H
// is not a whole number of chunks: "Hidden sizes that are not whole vectors"). bfloat16 runs
// on AMX tiles where the CPU has them (amx::gemm, whole panels) and the GEMM has at least
// amx::kMinRows rows (fewer would leave most of each tile zeros, copied in for every call),
// else on the vdpbf16ps micro-kernel.
template <typename E>
void gemm_packed(int64_t M, int64_t cols, const Product<E>* prods, int nprod, float* C,
                 int64_t ldc) {
  const int64_t npanels = (cols + NR - 1) / NR;
#if FLAX_LSTM_AMX
  if constexpr (std::is_same_v<E, bf16>) {
    if (M >= amx::kMinRows && nprod <= amx::kMaxProducts && amx::state() > 0)
      return amx::gemm(M, npanels, prods, nprod, C, ldc);
  }
#endif
  // Panels [0, whole) are computed whole, and a last one of at most VW columns as a vector.
  const bool half = half_panel(cols, npanels - 1);
  const int64_t whole = npanels - half;
  // One block of 1 or 2 rows takes panels_at_once of them at a time; more rows, one panel at a
  // time, every row block passing over it, and a rest of 1 or 2 rows (rest_in_pairs) over the
  // same panels two at a time, while they are in cache.
  if (M <= 2) {
    row_block_of<2>(static_cast<int>(M), 0, whole, prods, nprod, 0, C, ldc);
    if (half) row_block_of<2, true>(static_cast<int>(M), whole, npanels, prods, nprod, 0, C, ldc);
    return;
  }
  const int64_t rest = rest_in_pairs(M), main = M - rest, step = rest > 0 ? 2 : 1;
  for (int64_t p = 0; p < whole; p += step) {
    const int64_t p1 = std::min(whole, p + step);
    for (int64_t i = 0, rows; i < main; i += rows) {
      rows = next_block(main - i);
      row_block_of<MR>(static_cast<int>(rows), p, p1, prods, nprod, i, C, ldc);
    }
    if (rest > 0) row_block_of<2>(static_cast<int>(rest), p, p1, prods, nprod, main, C, ldc);
  }
  if (!half) return;
  for (int64_t i = 0, rows; i < main; i += rows) {
    rows = next_block(main - i);
    row_block_of<MR, true>(static_cast<int>(rows), whole, npanels, prods, nprod, i, C, ldc);
  }
  if (rest > 0)
    row_block_of<2, true>(static_cast<int>(rest), whole, npanels, prods, nprod, main, C, ldc);
}

// dst[c·ld + i] = rows[i][k + c] for a VW × VW block of 32-bit words (i, c < VW): a transpose
// in registers, bit for bit.
inline void transpose_block(const float* const* rows, int64_t k, float* dst, int64_t ld) {
#if defined(__AVX512F__)
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(rows[i] + k);
  for (int i = 0; i < 8; ++i) {  // pairs of rows interleaved, within each 128-bit lane
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + m], lane l: column 4l + m of rows 4i … 4i + 3
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {  // lane l of the four row groups: column 4l + m
    const __m512 v0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xdd);
    const __m512 w0 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x88);
    const __m512 w1 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xdd);
    _mm512_storeu_ps(dst + m * ld, _mm512_shuffle_f32x4(v0, w0, 0x88));
    _mm512_storeu_ps(dst + (4 + m) * ld, _mm512_shuffle_f32x4(v1, w1, 0x88));
    _mm512_storeu_ps(dst + (8 + m) * ld, _mm512_shuffle_f32x4(v0, w0, 0xdd));
    _mm512_storeu_ps(dst + (12 + m) * ld, _mm512_shuffle_f32x4(v1, w1, 0xdd));
  }
#elif defined(__AVX2__) && FLAX_LSTM_VW == 8
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows[i] + k);
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // r[4h + m], half l: column 4l + m of rows 4h … 4h + 3
    r[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int m = 0; m < 4; ++m) {
    _mm256_storeu_ps(dst + m * ld, _mm256_permute2f128_ps(r[m], r[4 + m], 0x20));
    _mm256_storeu_ps(dst + (4 + m) * ld, _mm256_permute2f128_ps(r[m], r[4 + m], 0x31));
  }
#else  // copied as bytes: the words may be pairs of bfloat16s (see pack_rows)
  for (int c = 0; c < VW; ++c)
    for (int i = 0; i < VW; ++i) std::memcpy(dst + c * ld + i, rows[i] + k + c, sizeof(float));
#endif
}

// Packs columns of Bᵀ for gemm_packed into `out` (round_up(cols, NR) / NR panels): column
// `col` of the packed B, zero-padded to whole panels, is row src(col) of a row-major matrix
// with K columns. Written panel by panel in order, reading NR rows side by side: a whole panel
// in blocks of VW × VW 32-bit words transposed in registers (transpose_block), the rest element
// by element.
template <typename E, typename Src>
void pack_rows(const E* w, int64_t K, int64_t cols, Src src, E* out) {
  const int64_t padded = round_up(cols, NR), Kp = round_up(K, kPanelK<E>);
  for (int64_t c0 = 0; c0 < padded; c0 += NR) {
    const E* rows[NR];
    for (int j = 0; j < NR; ++j) rows[j] = c0 + j < cols ? w + src(c0 + j) * K : nullptr;
    E* panel = out + (c0 / NR) * panel_size<E>(K);
    // A pair of bfloat16 K-steps is 32 bits, and a bfloat16 panel's row of pairs is the rows'
    // pairs side by side: the same transpose of 32-bit words as a float32 panel's.
    int64_t k = 0;
    if (c0 + NR <= cols) {
      const float* words[NR];
      for (int j = 0; j < NR; ++j) words[j] = reinterpret_cast<const float*>(rows[j]);
      float* out_words = reinterpret_cast<float*>(panel);
      for (int64_t q = 0; (q + VW) * kPair<E> <= K; q += VW, k += VW * kPair<E>)
        for (int j = 0; j < NR; j += VW) transpose_block(words + j, q, out_words + q * NR + j, NR);
    }
    for (; k < Kp; ++k)
      for (int j = 0; j < NR; ++j)
        panel[panel_at<E>(k, j)] = rows[j] != nullptr && k < K ? rows[j][k] : E{};
  }
}

// Packs the columns [c0, c0 + cols) of a row-major K × ld matrix for gemm_packed into `out`
// (round_up(cols, NR) / NR panels, zero-padded).
template <typename E>
void pack_cols(const E* w, int64_t K, int64_t ld, int64_t c0, int64_t cols, E* out) {
  const int64_t padded = round_up(cols, NR), Kp = round_up(K, kPanelK<E>);
  for (int64_t p = 0; p < padded; p += NR) {
    E* panel = out + (p / NR) * panel_size<E>(K);
    const int64_t width = std::min<int64_t>(NR, cols - p);
    if constexpr (kPair<E> == 1) {
      for (int64_t k = 0; k < K; ++k) {
        std::memcpy(panel + k * NR, w + k * ld + c0 + p, width * sizeof(E));
        std::fill(panel + k * NR + width, panel + (k + 1) * NR, E{});
      }
    } else {
      for (int64_t k = 0; k < Kp; ++k)
        for (int64_t j = 0; j < NR; ++j)
          panel[panel_at<E>(k, j)] = j < width && k < K ? w[k * ld + c0 + p + j] : E{};
    }
  }
}

}  // namespace
