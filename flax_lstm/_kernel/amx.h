// The bfloat16 GEMM on AMX tiles (amx::gemm), and the run-time check that decides whether
// the CPU and the OS allow it (amx::state).
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "micro_kernel.h"

namespace {

#if FLAX_LSTM_AMX
// AMX. Where the CPU has AMX-BF16, gemm_packed<bf16> runs on tiles. A tile is 16 rows of 64
// bytes: 32 bfloat16s (A: 16 rows × 32 K-steps; B: 16 K-pairs × 16 columns, each a pair) or 16
// floats (C), and tdpbf16ps adds C[m][n] += Σ_p A[m][2p]·B[p][2n] + A[m][2p+1]·B[p][2n+1] in
// float32. A bfloat16 panel's rows are K-pairs of NR = 32 columns (128 bytes), so B's tiles load
// straight from a panel, 16 K-pairs at a time, at column 0 or 16 with a stride of 128 bytes;
// the panel's K is a multiple of 32 (kPanelK), so no load reads past it.
//
// Blocks of 32 rows × one panel: C in tiles 0, 1 (rows 0-15, columns 0-15 and 16-31) and 2, 3
// (rows 16-31), A in tiles 4 and 5, B in 6 and 7. A's rows load from the matrix where they can
// (a Product without `rows`, a whole tile row of 16, a whole block of 32 K-steps); the rest of
// them (ragged batches, a partial last tile row, the last K-steps past a multiple of 32) is
// copied into a zero-padded buffer first, so no tile holds what is not A (NaN·0 is NaN) and no
// load reads past A. A partial tile row of C goes through a buffer too.
//
// Tile state belongs to the thread, and XLA's pool threads run other work between items: each
// call configures the tiles (ldtilecfg) and releases them before it returns.
namespace amx {

static_assert(NR == 32, "a bfloat16 panel row is two B tiles of 16 columns");
constexpr int kRows = 16;       // rows of a tile
constexpr int kK = 32;          // bfloat16 K-steps in a row of an A tile
constexpr int kMaxProducts = 2;
// The fewest rows a GEMM takes to the tiles. A tile row of 8 to 16 rows costs the same tile
// operations; below 16 its rows are copied into a zero-padded buffer. 16 left every GEMM of a
// batch of 5 to 15 sequences on vdpbf16ps, at half the speed of a batch of 16 on the tiles
// (docs/performance/design.md, "Intel Emerald Rapids: the first AMX run").
constexpr int kMinRows = 8;

// The tile primitives, the one part that differs between the hardware and the emulation. Tile
// numbers are literals (the instructions encode them).
#if FLAX_LSTM_AMX == 2
// The emulation: a thread's eight tiles in memory. Using them while the tiles are not
// configured traps, as the hardware does.
struct Tiles {
  alignas(64) unsigned char row[8][kRows][64];
  bool configured = false;
};
thread_local Tiles tiles;
std::atomic<int64_t> emulated_dots{0};  // tdpbf16ps done, for the tests (FlaxLstmAmxDots)

inline void check_configured() {
  if (!tiles.configured) __builtin_trap();
}
inline void configure() {
  if (tiles.configured) __builtin_trap();  // a call configures once and releases
  tiles.configured = true;
}
inline void release() {
  check_configured();
  tiles.configured = false;
}
inline void emu_load(int t, const void* p, int64_t stride) {
  check_configured();
  for (int r = 0; r < kRows; ++r)
    std::memcpy(tiles.row[t][r], static_cast<const char*>(p) + r * stride, 64);
}
inline void emu_store(int t, void* p, int64_t stride) {
  check_configured();
  for (int r = 0; r < kRows; ++r)
    std::memcpy(static_cast<char*>(p) + r * stride, tiles.row[t][r], 64);
}
inline void emu_zero(int t) {
  check_configured();
  std::memset(tiles.row[t], 0, sizeof tiles.row[t]);
}
inline float widen(bf16 v) { return std::bit_cast<float>(static_cast<uint32_t>(v) << 16); }
inline void emu_dot(int c, int a, int b) {
  check_configured();
  float C[kRows][kRows];
  bf16 A[kRows][kK], B[kRows][kK];
  std::memcpy(C, tiles.row[c], sizeof C);
  std::memcpy(A, tiles.row[a], sizeof A);
  std::memcpy(B, tiles.row[b], sizeof B);
  for (int m = 0; m < kRows; ++m)
    for (int n = 0; n < kRows; ++n)
      for (int p = 0; p < kK / 2; ++p)
        C[m][n] += widen(A[m][2 * p]) * widen(B[p][2 * n]) +
                   widen(A[m][2 * p + 1]) * widen(B[p][2 * n + 1]);
  std::memcpy(tiles.row[c], C, sizeof C);
  emulated_dots.fetch_add(1, std::memory_order_relaxed);
}
#define FLAX_LSTM_AMX_TARGET
#define FLAX_LSTM_TILE_LOAD(t, p, stride) emu_load(t, p, stride)
#define FLAX_LSTM_TILE_STORE(t, p, stride) emu_store(t, p, stride)
#define FLAX_LSTM_TILE_ZERO(t) emu_zero(t)
#define FLAX_LSTM_TILE_DOT(c, a, b) emu_dot(c, a, b)
#else
// GCC's tile intrinsics are asm statements that tell the compiler nothing of the memory they
// read or write: each is fenced by compiler barriers, so that the copies made for a tile load
// are written before it and a tile store's output is read after it.
#define FLAX_LSTM_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))
#define FLAX_LSTM_TILE_OP(op)              \
  do {                                     \
    __asm__ volatile("" ::: "memory");     \
    op;                                    \
    __asm__ volatile("" ::: "memory");     \
  } while (0)
#define FLAX_LSTM_TILE_LOAD(t, p, stride) FLAX_LSTM_TILE_OP(_tile_loadd(t, p, stride))
#define FLAX_LSTM_TILE_STORE(t, p, stride) FLAX_LSTM_TILE_OP(_tile_stored(t, p, stride))
#define FLAX_LSTM_TILE_ZERO(t) FLAX_LSTM_TILE_OP(_tile_zero(t))
#define FLAX_LSTM_TILE_DOT(c, a, b) FLAX_LSTM_TILE_OP(_tile_dpbf16ps(c, a, b))

// Palette 1, tiles 0-7 of 16 rows × 64 bytes.
struct alignas(64) Config {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {kRows, kRows, kRows, kRows, kRows, kRows, kRows, kRows};
};
static_assert(sizeof(Config) == 64);

FLAX_LSTM_AMX_TARGET inline void configure() {
  static const Config config;
  FLAX_LSTM_TILE_OP(_tile_loadconfig(&config));
}
FLAX_LSTM_AMX_TARGET inline void release() { FLAX_LSTM_TILE_OP(_tile_release()); }
#endif

// What the bfloat16 step GEMMs run on, decided once per process (FlaxLstmAmx reports it): 1 AMX
// tiles, 2 the emulation, 0 the CPU (or the OS) has no AMX-BF16, -1 disabled by FLAX_LSTM_AMX,
// -2 Linux refused the permission for tile data.
int check() {
  if (const char* v = std::getenv("FLAX_LSTM_AMX")) {
    std::string s;
    for (const char* c = v; *c; ++c)
      if (!std::isspace(static_cast<unsigned char>(*c)))
        s += static_cast<char>(std::tolower(static_cast<unsigned char>(*c)));
    if (s == "0" || s == "false" || s == "no" || s == "off") return -1;
  }
#if FLAX_LSTM_AMX == 2
  return 2;
#else
  unsigned a, b, c, d;
  // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24)))
    return 0;
  // The OS saves the tile state: XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA), read by xgetbv,
  // which OSXSAVE (CPUID leaf 1, ECX bit 27) allows.
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;
  uint32_t xcr0, high;
  __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(high) : "c"(0));
  if ((xcr0 & (3u << 17)) != (3u << 17)) return 0;
  // Linux hands out tile data per process on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) != 0) return -2;
  return 1;
#endif
}

inline int state() {
  static const int s = check();
  return s;
}

// Where the rows of one tile row of A (16 rows from row i0 of the block) are read: the first
// `direct` K-steps from the matrix (stride `lda` elements), the others from `copy` (stride
// `width`, K-steps from `direct` on, zero-padded to a multiple of kK).
struct Rows {
  const bf16* a;
  int64_t lda, direct;
  const bf16* copy;
  int64_t width;
};

// Copies the rows of tile row r of the block [i0, i0 + m) of product pr that do not load from
// the matrix into `out` (kRows × width), and says where each K block is read.
inline Rows plan_rows(const Product<bf16>& pr, int64_t i0, int64_t m, int r, bf16* out) {
  const int64_t first = i0 + r * kRows, valid = std::clamp<int64_t>(i0 + m - first, 0, kRows);
  const int64_t K = pr.K, Kp = round_up(K, kK);
  const int64_t direct = pr.rows == nullptr && valid == kRows ? K / kK * kK : 0;
  const int64_t width = Kp - direct;
  for (int64_t i = 0; i < kRows && width > 0; ++i) {
    bf16* o = out + i * width;
    if (i < valid) {
      const int64_t row = pr.rows == nullptr ? first + i : pr.rows[first + i];
      std::memcpy(o, pr.A + row * pr.lda + direct, (K - direct) * sizeof(bf16));
      std::fill(o + (K - direct), o + width, bf16{});
    } else {
      std::fill(o, o + width, bf16{});
    }
  }
  return {pr.A + first * pr.lda, pr.lda, direct, out, width};
}

// The A tile of K block k (a multiple of kK) of a tile row.
inline const bf16* a_tile(const Rows& r, int64_t k, int64_t& stride_bytes) {
  if (k < r.direct) {
    stride_bytes = r.lda * 2;
    return r.a + k;
  }
  stride_bytes = r.width * 2;
  return r.copy + (k - r.direct);
}

// gemm_packed's contract for bfloat16 (at most kMaxProducts products) on AMX tiles.
FLAX_LSTM_AMX_TARGET void gemm(int64_t M, int64_t npanels, const Product<bf16>* prods, int nprod,
                               float* C, int64_t ldc) {
  if (M <= 0) return;
  thread_local std::vector<bf16> copies;
  alignas(64) float part[kRows * kRows];  // a C tile of a partial tile row
  size_t need = 0;
  for (int q = 0; q < nprod; ++q) need += 2 * kRows * round_up(prods[q].K, kK);
  if (copies.size() < need) copies.resize(need);
  const int64_t ldc_bytes = ldc * static_cast<int64_t>(sizeof(float));
  // Stores C tiles c0, c1 (columns 0-15, 16-31) of a tile row with `rows` valid rows at c.
#define FLAX_LSTM_TILE_STORE_ROW(c0, c1, c, rows)                                       \
  do {                                                                                \
    if ((rows) == kRows) {                                                            \
      FLAX_LSTM_TILE_STORE(c0, c, ldc_bytes);                                         \
      FLAX_LSTM_TILE_STORE(c1, (c) + kRows, ldc_bytes);                               \
    } else {                                                                          \
      FLAX_LSTM_TILE_STORE(c0, part, kRows * sizeof(float));                          \
      for (int64_t i = 0; i < (rows); ++i)                                            \
        std::memcpy((c) + i * ldc, part + i * kRows, kRows * sizeof(float));          \
      FLAX_LSTM_TILE_STORE(c1, part, kRows * sizeof(float));                          \
      for (int64_t i = 0; i < (rows); ++i)                                            \
        std::memcpy((c) + i * ldc + kRows, part + i * kRows, kRows * sizeof(float));  \
    }                                                                                 \
  } while (0)
  configure();
  for (int64_t i0 = 0; i0 < M; i0 += 2 * kRows) {
    const int64_t m = std::min<int64_t>(2 * kRows, M - i0);
    const bool two = m > kRows;  // a second tile row
    Rows rows[kMaxProducts][2];
    bf16* out = copies.data();
    for (int q = 0; q < nprod; ++q) {
      for (int r = 0; r < 1 + two; ++r) {
        rows[q][r] = plan_rows(prods[q], i0, m, r, out);
        out += kRows * rows[q][r].width;
      }
    }
    for (int64_t p = 0; p < npanels; ++p) {
      FLAX_LSTM_TILE_ZERO(0);
      FLAX_LSTM_TILE_ZERO(1);
      if (two) {
        FLAX_LSTM_TILE_ZERO(2);
        FLAX_LSTM_TILE_ZERO(3);
      }
      for (int q = 0; q < nprod; ++q) {
        const bf16* panel = prods[q].Bp + p * panel_size<bf16>(prods[q].K);
        for (int64_t k = 0; k < prods[q].K; k += kK) {
          // K-pair row k / 2 of the panel: NR pairs, 4·NR bytes.
          const bf16* b = panel + k * NR;
          FLAX_LSTM_TILE_LOAD(6, b, 4 * NR);
          FLAX_LSTM_TILE_LOAD(7, b + 2 * kRows, 4 * NR);
          int64_t stride;
          const bf16* a = a_tile(rows[q][0], k, stride);
          FLAX_LSTM_TILE_LOAD(4, a, stride);
          FLAX_LSTM_TILE_DOT(0, 4, 6);
          FLAX_LSTM_TILE_DOT(1, 4, 7);
          if (two) {
            a = a_tile(rows[q][1], k, stride);
            FLAX_LSTM_TILE_LOAD(5, a, stride);
            FLAX_LSTM_TILE_DOT(2, 5, 6);
            FLAX_LSTM_TILE_DOT(3, 5, 7);
          }
        }
      }
      float* c = C + i0 * ldc + p * NR;
      FLAX_LSTM_TILE_STORE_ROW(0, 1, c, std::min<int64_t>(m, kRows));
      if (two) FLAX_LSTM_TILE_STORE_ROW(2, 3, c + kRows * ldc, m - kRows);
    }
  }
  release();
#undef FLAX_LSTM_TILE_STORE_ROW
}

}  // namespace amx
#endif

}  // namespace
