// The recurrence of one LSTM layer on CPU, forward and backward, as XLA FFI custom calls.
//
// flax_lstm compiles this file on first use (see flax_lstm/kernel.py) with the XLA FFI headers
// of the installed jaxlib and -march=native. It covers what XLA:CPU runs slowly: the T
// sequential steps of a small GEMM ([x_t, h_{t-1}]·[W_ih; W_hh]ᵀ forward, dz_t·W_hh backward),
// each followed by the gate arithmetic. XLA pays a thread wake-up per GEMM, runs the gate
// arithmetic on one thread and allocates per-step temporaries. Here the weights are packed once
// per call into panels for a register-blocked GEMM, each step is split into chunks of hidden
// units whose GEMM and gate arithmetic run back to back on one thread (the gate arithmetic
// reads the GEMM's output from cache), and a team of threads claims the chunks in order (see
// run_team below). Small batches (of at most `small_batch` sequences, an attribute of the call),
// where a step reads every weight for a few multiply-adds, compute the input projection for
// blocks of 64 steps at once, and each thread keeps to its own share of the chunks so that their
// weights stay in its core's cache.
//
// Ragged batches (seq_lengths) cost their real steps: the rows are taken in order of length,
// longest first, once per call, and each step's GEMM and gate arithmetic run on the rows whose
// sequence has not ended (the packed GEMM reads its rows through that order); a finished row
// only carries its state on, as a masked step did (see Order). In float32 the weight and input
// gradients are calls here too (weight_grads, input_grad), over the valid steps only; a padded
// batch takes them too unless its rows are few (the Python side's rule). What each of these
// saves is measured in docs/performance/design.md ("Ragged batches", "Tuning per CPU").
//
// The weight and input gradients of bfloat16, single large GEMMs, stay in XLA. float32, and
// bfloat16 where the CPU has AVX512_BF16 (the GEMM operands x,
// h, W and dz in bfloat16, products summed in float32 by vdpbf16ps, or on AMX tiles by
// tdpbf16ps where the CPU has AMX-BF16, see amx below; gates, cell states and gradients in
// float32, as the lax.scan path computes bfloat16). Which calls come here is decided on the
// Python side, and stated once there: KERNEL_REACH in flax_lstm/plan.py.
//
// Layouts (row-major); the D directions' step t run side by side:
//   x     (T, D, N, I)   direction 1's input reversed in time by the caller
//   w_ih  (D, 4H, I), w_hh (D, 4H, H), bias (D, 4H) = b_ih + b_hh, as torch stores them
//                        (gate order i, f, g, o)
//   h0/c0 (D, N, H)
//   mask  (T, N) int8   nonzero where step t of sequence n is valid, or empty: all valid.
//                        A masked step keeps the state (and passes gradients through). A
//                        prefix per row (steps 0 … len - 1 valid) skips the rows that ended.
// x, w_ih, w_hh, h0, hs, dhs and dz are of the element type E (float, or bf16: bfloat16 bits);
// bias, c0, cs, the gates and the other gradients are float32.

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__)
#define FLAX_LSTM_BF16 1
#endif

// AMX tiles for the bfloat16 step GEMMs (see amx below): compiled with the bfloat16 kernel on
// x86-64 Linux where the compiler has the AMX intrinsics (through target attributes: the
// library needs no AMX -march), and used where the run-time check finds AMX-BF16. A test build
// with -DFLAX_LSTM_AMX_EMULATE=1 runs the same code with the tile instructions done in
// software, on any CPU that has the bfloat16 kernel.
#if FLAX_LSTM_BF16 && defined(__x86_64__)
#if defined(FLAX_LSTM_AMX_EMULATE) && FLAX_LSTM_AMX_EMULATE
#define FLAX_LSTM_AMX 2
#elif defined(__linux__) && defined(__has_include)
#if __has_include(<amxbf16intrin.h>) || __has_include(<amxintrin.h>)
#define FLAX_LSTM_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int VW = 16;  // floats per vector register
constexpr int MR = 8;   // rows of the GEMM micro-kernel: 2·MR accumulators + 2 + 1 registers
#else
constexpr int VW = 8;
constexpr int MR = 6;
#endif
constexpr int NR = 2 * VW;  // columns of a packed panel of B

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

typedef float vec __attribute__((vector_size(VW * 4)));
typedef float vec_u __attribute__((vector_size(VW * 4), aligned(4)));  // unaligned access

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// bfloat16 as stored by XLA (the upper half of a float32's bits).
using bf16 = uint16_t;

// K-steps per packed row of a panel: a float each, or a pair of bfloat16s side by side (the
// operand of vdpbf16ps, and the rows of an AMX tile of B).
template <typename E>
constexpr int kPair = sizeof(E) == 2 ? 2 : 1;

// A bfloat16 panel holds K rounded up to a multiple of 32, the K of an AMX tile, zero rows past
// K, so that the tile GEMM (see amx below) loads whole tiles of it and never reads past it; the
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
#if (defined(__x86_64__) || defined(__i386__)) && defined(__AVX__)  // a vec fits one register
  asm("" : "+v"(v));
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
template <int M, int P>
inline void accumulate(vec (&acc0)[P][M], vec (&acc1)[P][M], const float* const (&A)[M], int K,
                       const float* const (&B)[P]) {
  for (int k = 0; k < K; ++k) {
#pragma GCC unroll 4
    for (int j = 0; j < P; ++j) {
      vec b0 = *reinterpret_cast<const vec_u*>(B[j] + k * NR);
      vec b1 = *reinterpret_cast<const vec_u*>(B[j] + k * NR + VW);
      if constexpr (M <= 4) {  // more rows compile as they always did
        in_register(b0);
        in_register(b1);
      }
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) {
        const float a = A[i][k];
        acc0[j][i] += a * b0;
        acc1[j][i] += a * b1;
      }
    }
  }
}

#if FLAX_LSTM_BF16
// The same with bfloat16 operands: each vdpbf16ps adds the products of two K-steps (a pair of
// A broadcast against pairs of B) to float32 accumulators. An odd last K-step pairs A's value
// with a zero (B is zero-padded there), so A is never read past its row.
template <int M, int P>
inline void accumulate(vec (&acc0)[P][M], vec (&acc1)[P][M], const bf16* const (&A)[M], int K,
                       const bf16* const (&B)[P]) {
  const auto step = [&](int k, auto a_at) {
#pragma GCC unroll 4
    for (int j = 0; j < P; ++j) {
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(B[j] + k * NR);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(B[j] + k * NR + 2 * VW);
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(a_at(A[i] + k)));
        acc0[j][i] = (vec)_mm512_dpbf16_ps((__m512)acc0[j][i], a, b0);
        acc1[j][i] = (vec)_mm512_dpbf16_ps((__m512)acc1[j][i], a, b1);
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
// panels of B.
template <int M, int P, typename E>
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
    accumulate<M, P>(acc0, acc1, a, pr.K, b);
  }
#pragma GCC unroll 4
  for (int j = 0; j < P; ++j) {
    float* c = C + i0 * ldc + (p + j) * NR;
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      *reinterpret_cast<vec_u*>(c + i * ldc) = acc0[j][i];
      *reinterpret_cast<vec_u*>(c + i * ldc + VW) = acc1[j][i];
    }
  }
}

// One block of M rows over panels [p0, p1): panels_at_once(M) panels a call, then one at a time.
template <int M, typename E>
inline void row_block(int64_t p0, int64_t p1, const Product<E>* prods, int nprod, int64_t i0,
                      float* C, int64_t ldc) {
  constexpr int P = panels_at_once(M);
  int64_t p = p0;
  if constexpr (P > 1)
    for (; p + P <= p1; p += P) micro<M, P>(prods, nprod, i0, p, C, ldc);
  for (; p < p1; ++p) micro<M, 1>(prods, nprod, i0, p, C, ldc);
}

// row_block for a block of `rows` rows, 1 ≤ rows ≤ M.
template <int M, typename E>
inline void row_block_of(int rows, int64_t p0, int64_t p1, const Product<E>* prods, int nprod,
                         int64_t i0, float* C, int64_t ldc) {
  if constexpr (M > 0) {
    if (rows == M) return row_block<M>(p0, p1, prods, nprod, i0, C, ldc);
    return row_block_of<M - 1>(rows, p0, p1, prods, nprod, i0, C, ldc);
  }
}

// Rows of gemm_packed's next row block when `left` rows remain: MR, and the rest at the end.
// With AVX2 a rest of 1 to 3 rows (too few sums for the multiply-add latency) shares the last
// full block instead: its MR + rest rows as two blocks of about half, 8 rows as 4 + 4 rather
// than 6 + 2 (measured on Zen 3; docs/performance/design.md, "Short row blocks on AVX2").
// AVX-512 keeps the rest in a block of its own, as measured on Zen 5.
constexpr int64_t next_block(int64_t left) {
#if !defined(__AVX512F__)
  if (left > MR && left < MR + 4) return (left + 1) / 2;
#endif
  return std::min<int64_t>(left, MR);
}

#if FLAX_LSTM_AMX
// ---------------------------------------------------------------------------------------------
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

// C (M × npanels·NR, leading dimension ldc) = the sum of the products, panel by panel: every
// row block of A passes over the same panel of B, which stays in L1 or L2 (blocking K to fit
// L1 measured slower: docs/performance/design.md, "Tuning per CPU"). bfloat16 runs on AMX
// tiles where the CPU has them (amx::gemm) and the GEMM has at least amx::kMinRows rows (fewer
// would leave most of each tile zeros, copied in for every call), else on the vdpbf16ps
// micro-kernel.
template <typename E>
void gemm_packed(int64_t M, int64_t npanels, const Product<E>* prods, int nprod, float* C,
                 int64_t ldc) {
#if FLAX_LSTM_AMX
  if constexpr (std::is_same_v<E, bf16>) {
    if (M >= amx::kMinRows && nprod <= amx::kMaxProducts && amx::state() > 0)
      return amx::gemm(M, npanels, prods, nprod, C, ldc);
  }
#endif
  // One block of 1 or 2 rows takes panels_at_once of them at a time; more rows, one panel at a
  // time, every row block passing over it.
  if (M <= 2) return row_block_of<2>(static_cast<int>(M), 0, npanels, prods, nprod, 0, C, ldc);
  for (int64_t p = 0; p < npanels; ++p) {
    for (int64_t i = 0, rows; i < M; i += rows) {
      rows = next_block(M - i);
      row_block_of<MR>(static_cast<int>(rows), p, p + 1, prods, nprod, i, C, ldc);
    }
  }
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
#elif defined(__AVX2__)
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

// ---------------------------------------------------------------------------------------------
// Work sharing. A call's work is a list of items, claimed in order from one atomic counter by
// whichever threads are in the team: first the pages of the fresh output buffers to fault in,
// then (direction, step, chunk of hidden units) in the order of the recurrence. An item of step
// t waits until every item of the step before is done (its GEMM reads the whole previous h, or
// dz), which the threads see through a second counter of finished items. Items are claimed in
// order, so the items a thread waits on are already held by running threads: no deadlock,
// whoever joins and whenever.
//
// The team is the calling thread plus workers of XLA's own thread pool (no thread is created
// per call). The caller starts at once; a worker joins whenever the pool runs its task, even
// halfway through the sequence, for instance once an XLA operation that ran beside the kernel
// has finished. XLA promises no parallelism for scheduled tasks, so nothing ever waits for a
// worker to come: a task that starts after the work is done leaves at once. The state is
// shared with the tasks, which may outlive the call.

class Team {
 public:
  static constexpr int64_t kClosed = int64_t{1} << 40;
  std::atomic<int64_t> members{0};  // threads that joined | kClosed once the caller is done
  std::atomic<int64_t> left{0};     // threads that finished
  std::atomic<int64_t> next{0};     // next item to claim
  std::atomic<int64_t> done{0};     // items finished

  // Joins the team: returns the thread's slot (0 for the caller, in order of joining), or -1
  // once the team is closed.
  int join() {
    int64_t m = members.load(std::memory_order_acquire);
    while (!(m & kClosed)) {
      if (members.compare_exchange_weak(m, m + 1, std::memory_order_acq_rel))
        return static_cast<int>(m);
    }
    return -1;
  }
  void leave() {
    left.fetch_add(1, std::memory_order_acq_rel);
    left.notify_all();
  }
};

// One round of waiting for other threads: spin briefly, then give the core away.
inline void back_off(int spins) {
  if (spins < 4000) {
    cpu_relax();
  } else {
    std::this_thread::yield();
  }
}

// Runs worker(team, slot) on the calling thread (slot 0) and on up to threads - 1 pool workers;
// worker claims and runs items until none is left. Returns once every thread that joined has
// left.
template <typename Worker>
void run_team(ffi::ThreadPool& pool, int threads, const Worker& worker) {
  auto team = std::make_shared<Team>();
  const int slot = team->join();
  const std::thread::id caller = std::this_thread::get_id();
  for (int i = 1; i < threads; ++i) {
    pool.Schedule([team, caller, &worker]() {
      if (std::this_thread::get_id() == caller) return;  // run inline: no parallelism there
      const int slot = team->join();
      if (slot < 0) return;  // too late: the work is done and `worker` may be gone
      worker(*team, slot);
      team->leave();
    });
  }
  worker(*team, slot);
  team->leave();
  const int64_t joined = team->members.fetch_or(Team::kClosed, std::memory_order_acq_rel);
  for (int64_t n = team->left.load(std::memory_order_acquire); n < joined;
       n = team->left.load(std::memory_order_acquire))
    team->left.wait(n, std::memory_order_acquire);
}

// Faults in the pages of fresh output buffers with one system call per piece instead of one
// trap per 4 KiB page on first write (each trap costs microseconds, more under a hypervisor:
// the 16 MB of saved gates of B32 T128 H256 are 4096 of them); the pieces are work items, so
// the zeroing of the pages runs on every thread of the team. The whole 2 MiB pages inside a
// buffer are asked to be transparent huge pages first (where the system leaves that to madvise,
// as by default): fewer pages to fault in, and fewer TLB misses for the kernel's strided rows
// of gates (docs/performance/design.md, "Fresh buffers"). Best effort: older kernels refuse,
// and then the writes fault the pages in as usual.
struct Span {
  void* data;
  size_t bytes;
};

class Prefault {
 public:
  // Pieces end on 2 MiB boundaries, so that each covers whole huge pages.
  static constexpr uintptr_t kPage = 4096, kPiece = uintptr_t{2} << 20;
  explicit Prefault(const std::vector<Span>& spans) {
    for (const Span& sp : spans) {
      const uintptr_t lo = reinterpret_cast<uintptr_t>(sp.data);
      const uintptr_t begin = (lo + kPage - 1) & ~(kPage - 1), end = (lo + sp.bytes) & ~(kPage - 1);
      if (end < begin + 16 * kPage) continue;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      const uintptr_t hb = (lo + kPiece - 1) & ~(kPiece - 1), he = (lo + sp.bytes) & ~(kPiece - 1);
      if (he > hb) madvise(reinterpret_cast<void*>(hb), he - hb, MADV_HUGEPAGE);
#endif
      for (uintptr_t p = begin; p < end;) {
        const uintptr_t next = std::min((p & ~(kPiece - 1)) + kPiece, end);
        pieces_.push_back({p, next});
        p = next;
      }
    }
  }
  int64_t size() const { return static_cast<int64_t>(pieces_.size()); }
  void run(int64_t i) const {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
    madvise(reinterpret_cast<void*>(pieces_[i].first), pieces_[i].second - pieces_[i].first,
            MADV_POPULATE_WRITE);
#else
    (void)i;
#endif
  }

 private:
  std::vector<std::pair<uintptr_t, uintptr_t>> pieces_;
};

struct Dims {
  int64_t T, D, N, I, H;
};

// Ragged batches. stack.py masks step t of sequence n where t >= its length, in the kernel's
// order for both directions (the caller reverses direction 1 within each length), so the mask
// is a prefix per row. Then the rows are taken in order of length, longest first: at step t
// the rows still running are the first active[t] of `rows`, each step's GEMM and gate
// arithmetic run on those only (a Product with `rows`), and a finished row only carries its
// state through (forward: h and c copied, no gates; backward: dh and dc passed on, dz zero).
// That is what the masked steps computed before, so the results are the same, and a batch
// costs its real steps. A mask that is not a prefix per row (run_layer accepts any) keeps
// every row active and masks the steps one by one, as does no mask at all (rows == nullptr).
struct Order {
  std::vector<int32_t> perm;    // the rows, longest first (ties in order); empty: 0, 1, …
  std::vector<int64_t> active;  // active[t], t in [0, T]: rows whose step t is valid
  bool prefix = false;          // the mask is a prefix per row (a step past active is masked)

  Order(const int8_t* mask, int64_t T, int64_t N) : active(static_cast<size_t>(T + 1), N) {
    active[T] = 0;
    if (mask == nullptr) return;
    std::vector<int64_t> len(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) {
      int64_t t = 0;
      while (t < T && mask[t * N + n] != 0) ++t;
      len[n] = t;
      for (int64_t u = t; u < T; ++u)
        if (mask[u * N + n] != 0) return;  // not a prefix: every row active, masked per step
    }
    prefix = true;
    perm.resize(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) perm[n] = static_cast<int32_t>(n);
    std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) {
      return len[a] > len[b];
    });
    for (int64_t t = 0, i = N; t < T; ++t) {
      while (i > 0 && len[perm[i - 1]] <= t) --i;
      active[t] = i;
    }
  }
  // The row of batch position i, and the rows argument of a Product.
  int64_t row(int64_t i) const { return perm.empty() ? i : perm[i]; }
  const int32_t* rows() const { return perm.empty() ? nullptr : perm.data(); }
  // Whether step t of active row n is valid (past active[t], no step is).
  bool valid(const int8_t* mask, int64_t t, int64_t N, int64_t n) const {
    return prefix || mask == nullptr || mask[t * N + n] != 0;
  }
};

// Asks for the cache lines of [p, p + bytes) ahead of their use.
inline void prefetch(const void* p, int64_t bytes) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p), end = begin + bytes;
  for (uintptr_t line = begin & ~uintptr_t{63}; line < end; line += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(line));
}

// The same for lines about to be written.
inline void prefetch_w(const void* p, int64_t bytes) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p), end = begin + bytes;
  for (uintptr_t line = begin & ~uintptr_t{63}; line < end; line += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(line), 1);
}

// A buffer of n elements that is not zeroed, for the packed weights and the hoisted projection:
// every element they read is written first. A std::vector would zero them before the packing
// writes them, a pass over 8 MiB a call at H512 (docs/performance/design.md, "The kernel
// against its ceiling on Zen 3").
template <typename T>
class Unzeroed {
 public:
  explicit Unzeroed(size_t n) : data_(new T[n]) {}
  T* data() const { return data_.get(); }
  T& operator[](size_t i) const { return data_[i]; }

 private:
  std::unique_ptr<T[]> data_;
};

// Forward chunks: 16 hidden units, i.e. 64 gate columns, two packed panels (a whole number of
// vectors for the gate arithmetic). Backward chunks: 32 units, one panel of dh.
constexpr int64_t kFwdUnits = 16, kBwdUnits = 32;
// Small batches, of at most `small_batch` sequences (rows of a step's GEMM; an attribute of the
// forward and backward calls, chosen on the Python side: flax_lstm/_kernel/tuning.py), hoist the
// input projection out of the steps in blocks of kBlock steps (see forward), and share each
// step's chunks among the threads in fixed runs (see run_items). Measured against the general
// scheme: docs/performance/design.md ("The CPU kernel", small batches).
constexpr int64_t kBlock = 64;

// The `groups` argument of run_items for a batch of N: one run per thread for small batches.
inline int runs_for_batch(int64_t N, int threads, int64_t small_batch) {
  return N <= small_batch ? threads : 1;
}

// A thread's scratch for one chunk's GEMM output, reused across items, and for the rows of x
// that a hoisted input projection gathers.
struct Scratch {
  std::vector<float> gate;
  std::vector<char> rows;
  float* get(size_t n) {
    if (gate.size() < n) gate.resize(n);
    return gate.data();
  }
  template <typename E>
  E* get_rows(size_t n) {
    if (rows.size() < n * sizeof(E)) rows.resize(n * sizeof(E));
    return reinterpret_cast<E*>(rows.data());
  }
};

// The right to write an item's results, for items that another thread may compute again (see
// run_items). Such an item's body first computes into its thread's scratch what reads only the
// rows before it, then calls claim(); only the first thread to claim the item writes results,
// and the body says whether it did (a thread that loses discards its work). A body whose item
// writes before it computes (it packs weights) claims first. Without a flag (run_groups, or an
// item nobody else computes) every claim succeeds.
struct Claim {
  std::atomic<uint8_t>* flag = nullptr;
  bool operator()() const {
    return flag == nullptr || flag->exchange(1, std::memory_order_acq_rel) == 0;
  }
};

// Runs body on an item. A body that takes a Claim says whether this thread wrote the item; any
// other writes as it computes, and no other thread ever computes its items again.
template <typename Body>
constexpr bool kTakesClaim = std::is_invocable_v<const Body&, int64_t, int64_t, Scratch&, Claim>;

template <typename Body>
bool run_body(const Body& body, int64_t row, int64_t chunk, Scratch& scratch, Claim claim) {
  if constexpr (kTakesClaim<Body>) {
    return body(row, chunk, scratch, claim);
  } else {
    body(row, chunk, scratch);
    return true;
  }
}

// run_items with the chunks of each row in `groups` runs, a run claimed whole (see run_items).
// Run g of row r is ready once every item before row r is done: the prefault pieces and the
// groups runs of each earlier row, counted in `done`.
template <typename Body>
void run_groups(ffi::ThreadPool& pool, int threads, const Prefault& prefault, int64_t rows,
                int64_t chunks, const Body& body, int groups) {
  const int64_t first = prefault.size();
  // next[g]: the next row of run g that nobody has claimed; each on its own cache line.
  struct alignas(64) Next {
    std::atomic<int64_t> row{0};
  };
  std::vector<Next> next(static_cast<size_t>(groups));
  run_team(pool, threads, [&](Team& team, int slot) {
    Scratch scratch;
    for (int64_t item = team.next.fetch_add(1, std::memory_order_acq_rel); item < first;
         item = team.next.fetch_add(1, std::memory_order_acq_rel)) {
      prefault.run(item);
      team.done.fetch_add(1, std::memory_order_acq_rel);
    }
    const auto ready = [&](int64_t row) {
      return team.done.load(std::memory_order_acquire) >= first + row * groups;
    };
    // Claims row `row` of run g and runs it, if it is ready and still the run's next row.
    const auto take = [&](int g, int64_t row) {
      if (row >= rows || !ready(row) ||
          !next[g].row.compare_exchange_strong(row, row + 1, std::memory_order_acq_rel))
        return false;
      for (int64_t k = g * chunks / groups, end = (g + 1) * chunks / groups; k < end; ++k)
        run_body(body, row, k, scratch, Claim{});
      team.done.fetch_add(1, std::memory_order_acq_rel);
      return true;
    };
    const int home = slot % groups;
    for (int spins = 0;;) {
      if (take(home, next[home].row.load(std::memory_order_acquire))) {
        spins = 0;
        continue;
      }
      bool left = false, took = false;
      for (int g = 0; g < groups && !took; ++g) {
        const int64_t row = next[g].row.load(std::memory_order_acquire);
        left = left || row < rows;
        took = g != home && take(g, row);
      }
      if (!left) break;
      if (took) {
        spins = 0;
      } else {
        back_off(spins++);
      }
    }
  });
}

// Runs the prefault pieces, then `rows` rows of `chunks` items, claimed in order by a team of up
// to `threads` threads: body(row, chunk, scratch, claim) runs once every item of the rows before
// it has finished (and, for the first row, every prefault piece), and returns whether this
// thread finished the item (see Claim).
//
// A thread that the operating system deschedules while it holds an item (for another process,
// or the hypervisor for another machine) would stall the whole team until it runs again: a
// time slice of milliseconds, against items of microseconds. So a thread waiting for a row
// that has waited four times as long as its own items take (at least kStealAfter) computes
// an unfinished item of that row again, and whichever thread claims it first writes it. The
// results are the same bits whoever computes them.
//
// With groups > 1 (small batches), each row is instead split into `groups` runs of whole chunks,
// and a thread keeps to the run of its slot, step after step, so that the packed weights of its
// chunks stay in its own core's cache: at a batch of one or a few sequences each step reads
// every weight once for a few multiply-adds, and the time is that of bringing the weights in.
// A thread whose own run cannot start yet takes another run's item that is ready and that no
// thread has claimed (a slot whose thread never came, or came late), so every item is done
// whoever joins.
//
// A test build with -DFLAX_LSTM_STEAL_TEST=1 makes that happen: a waiting thread steals at once,
// and the holder of every 7th item sleeps 200 µs before it starts, as a descheduled one would.
using Clock = std::chrono::steady_clock;
#if defined(FLAX_LSTM_STEAL_TEST) && FLAX_LSTM_STEAL_TEST
constexpr bool kStealTest = true;
#else
constexpr bool kStealTest = false;
#endif
constexpr Clock::duration kStealAfter = std::chrono::microseconds(kStealTest ? 0 : 20);
std::atomic<int64_t> stolen_items{0};  // items written by a thread that stole them, for the tests

template <typename Body>
void run_items(ffi::ThreadPool& pool, int threads, const Prefault& prefault, int64_t rows,
               int64_t chunks, const Body& body, int groups = 1) {
  const int64_t first = prefault.size(), total = first + rows * chunks;
  groups = static_cast<int>(std::min<int64_t>({groups, threads, chunks}));
  if (groups > 1) return run_groups(pool, threads, prefault, rows, chunks, body, groups);
  const bool stealable = kTakesClaim<Body> && threads > 1;
  std::vector<std::atomic<uint8_t>> claimed(static_cast<size_t>(stealable ? rows * chunks : 0));
  run_team(pool, threads, [&](Team& team, int) {
    Scratch scratch;
    // This thread's items take `item_time` on average, measured over those it ran between its
    // last two waits (the clock is read only when it waits).
    Clock::duration item_time = std::chrono::microseconds(100);
    Clock::time_point woke{};
    int64_t ran = 0;  // items since it last waited
    // Runs an item (stolen: held by another thread), and counts it as finished if this thread
    // wrote it.
    const auto run = [&](int64_t item, bool stolen) {
      const int64_t row = (item - first) / chunks, chunk = (item - first) % chunks;
      const Claim claim{claimed.empty() ? nullptr : &claimed[item - first]};
      if (kStealTest && stealable && !stolen && item % 7 == 3)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      if (run_body(body, row, chunk, scratch, claim)) {
        team.done.fetch_add(1, std::memory_order_acq_rel);
        if (stolen) stolen_items.fetch_add(1, std::memory_order_relaxed);
      }
    };
    // Computes again an item of the row in progress that some thread holds and nobody has
    // finished, if there is one (the rows before it are finished, so its inputs are ready).
    const auto steal = [&]() {
      const int64_t done = team.done.load(std::memory_order_acquire);
      if (claimed.empty() || done < first || done >= total) return;
      const int64_t row0 = first + (done - first) / chunks * chunks;
      const int64_t held = std::min(row0 + chunks, team.next.load(std::memory_order_acquire));
      for (int64_t item = row0; item < held; ++item) {
        if (claimed[item - first].load(std::memory_order_acquire) == 0) return run(item, true);
      }
    };
    // Waits until `ready` items are finished, stealing where the items allow it.
    const auto wait_for = [&](int64_t ready) {
      if (team.done.load(std::memory_order_acquire) >= ready) return;
      Clock::time_point since = Clock::now();
      if (ran > 0 && woke != Clock::time_point{}) item_time = (since - woke) / ran;
      const Clock::duration patience =
          kStealTest ? kStealAfter : std::max(4 * item_time, kStealAfter);
      for (int spins = 0; team.done.load(std::memory_order_acquire) < ready; ++spins) {
        if (stealable && (kStealTest || spins % 64 == 63) && Clock::now() - since >= patience) {
          steal();
          since = Clock::now();
        }
        back_off(spins);
      }
      woke = Clock::now();
      ran = 0;
    };
    for (int64_t item = team.next.fetch_add(1, std::memory_order_acq_rel); item < total;
         item = team.next.fetch_add(1, std::memory_order_acq_rel)) {
      if (item < first) {
        prefault.run(item);
        team.done.fetch_add(1, std::memory_order_acq_rel);
        continue;
      }
      wait_for(item - (item - first) % chunks);  // the items before its row
      run(item, false);
      ++ran;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Forward: h_t, c_t for every step, and the activated gates when `acts` is given. Each step's
// pre-activations x_t·W_ihᵀ + h_{t-1}·W_hhᵀ are one GEMM over both products, so no (T, N, 4H)
// input projection is ever stored. cs holds every step's cell state (T, D, N, H), or only the
// last one (D, N, H) when cs_all is false.

template <typename E>
void forward(const Dims& s, ffi::ThreadPool& pool, int threads, int64_t small_batch,
             const std::vector<Span>& fresh, const E* x, const E* w_ih, const float* bias,
             const E* w_hh, const E* h0, const float* c0, const int8_t* mask, E* hs, float* cs,
             bool cs_all, float* acts) {
  const int64_t T = s.T, D = s.D, N = s.N, I = s.I, H = s.H, G4 = 4 * H;
  const int64_t chunks = (H + kFwdUnits - 1) / kFwdUnits, cols = 4 * kFwdUnits;
  // Packed weights of every direction and chunk: chunk column g·16 + j is gate g of unit
  // 16·chunk + j (a row of W; past H, the last unit's again, computed and never stored).
  // Elements per chunk of packed W_ih, W_hh.
  const int64_t wi = panel_size<E>(I) * (cols / NR), wh = panel_size<E>(H) * (cols / NR);
  const Unzeroed<E> bi(static_cast<size_t>(D * chunks * wi));
  const Unzeroed<E> bh(static_cast<size_t>(D * chunks * wh));
  const Unzeroed<float> bcol(static_cast<size_t>(D * chunks * cols));
  // A chunk's weights are packed by the first item that uses them (its direction's first row,
  // which every later row waits for): the team shares the packing, and with small batches a
  // thread packs the chunks it keeps (run_groups) into its own core's cache.
  const auto pack = [&](int64_t d, int64_t k) {
    const int64_t u0 = k * kFwdUnits, nu = std::min(kFwdUnits, H - u0);
    const auto row_of = [&](int64_t col) {
      return (col / kFwdUnits) * H + u0 + std::min(col % kFwdUnits, nu - 1);
    };
    pack_rows(w_ih + d * G4 * I, I, cols, row_of, bi.data() + (d * chunks + k) * wi);
    pack_rows(w_hh + d * G4 * H, H, cols, row_of, bh.data() + (d * chunks + k) * wh);
    for (int64_t col = 0; col < cols; ++col)
      bcol[(d * chunks + k) * cols + col] = bias[d * G4 + row_of(col)];
  };
  // The cell state of every direction, shared: each item updates its chunk's units.
  std::vector<float> c(c0, c0 + D * N * H);
  // Small batches: the input projection x_t·W_ihᵀ of a block of kBlock steps is one GEMM with
  // the steps as rows, a row of items (one per chunk) before the block's steps, and each step's
  // GEMM is only h_{t-1}·W_hhᵀ: at a batch of a few sequences the per-step GEMM reads every
  // weight for a few multiply-adds each, so W_ih is then read once a block instead of once a
  // step. xp holds the block's projection, chunk by chunk: (D, chunks, kBlock · N, cols).
  const Order order(mask, T, N);
  const bool hoist = N <= small_batch;
  const int64_t blocks = hoist ? (T + kBlock - 1) / kBlock : 0, rows = T + blocks;
  const Unzeroed<float> xp(hoist ? static_cast<size_t>(D * chunks * kBlock * N * cols) : 0);
  // Row r: step r, or, hoisted, the projection of block r / (kBlock + 1) when r % (kBlock + 1)
  // == 0 and else step r - r / (kBlock + 1) - 1; item d·chunks + k of a row is chunk k of
  // direction d (the directions are independent, so both take the same row: a bidirectional
  // layer waits T times, not 2T).
  // An item's GEMM goes to the thread's scratch and its results are written once claimed (see
  // Claim); the items that write as they go (packing, the projection) claim first.
  run_items(pool, threads, Prefault(fresh), rows, D * chunks, [&](int64_t r, int64_t item,
                                                                    Scratch& scratch,
                                                                    Claim claim) {
    const int64_t d = item / chunks, k = item % chunks;
    const int64_t t = hoist ? r - r / (kBlock + 1) - 1 : r;
    const bool projection = hoist && r % (kBlock + 1) == 0;
    if ((r == 0 || projection) && !claim()) return false;
    if (r == 0) pack(d, k);
    const E* pi = bi.data() + (d * chunks + k) * wi;
    if (projection) {  // the input projection of the block's steps
      // Only the steps that some row still runs (none, past the longest sequence).
      const int64_t t0 = r / (kBlock + 1) * kBlock;
      int64_t nt = std::min(kBlock, T - t0);
      while (nt > 0 && order.active[t0 + nt - 1] == 0) --nt;
      if (nt == 0) return true;
      const E* a = x + (t0 * D + d) * N * I;
      if (D > 1) {  // the direction's rows are not contiguous: gather them
        E* g = scratch.get_rows<E>(static_cast<size_t>(nt * N * I));
        for (int64_t j = 0; j < nt; ++j)
          std::memcpy(g + j * N * I, x + ((t0 + j) * D + d) * N * I, N * I * sizeof(E));
        a = g;
      }
      const Product<E> prod{a, I, static_cast<int>(I), pi};
      gemm_packed(nt * N, cols / NR, &prod, 1, xp.data() + item * kBlock * N * cols, cols);
      return true;
    }
    const int64_t u0 = k * kFwdUnits, nu = std::min(kFwdUnits, H - u0);
    const int64_t row0 = (t * D + d) * N;  // first row of step t, direction d
    const E* hprev = t == 0 ? h0 + d * N * H : hs + (row0 - D * N) * H;
    const E* ph = bh.data() + (d * chunks + k) * wh;
    const int64_t na = order.active[t];  // gate row i is batch row order.row(i)
    for (int64_t i = 0; i < N; ++i) {  // the rows written below, asked for while the GEMM runs
      const int64_t r = row0 + order.row(i);
      prefetch_w(hs + r * H + u0, nu * sizeof(E));
      if (cs_all) prefetch_w(cs + r * H + u0, nu * sizeof(float));
      if (acts != nullptr)
        for (int64_t g = 0; g < 4; ++g) prefetch_w(acts + r * G4 + g * H + u0, nu * sizeof(float));
    }
    const Product<E> prods[2] = {{x + row0 * I, I, static_cast<int>(I), pi, order.rows()},
                                 {hprev, H, static_cast<int>(H), ph, order.rows()}};
    float* gate = scratch.get(static_cast<size_t>(N * cols));
    gemm_packed(na, cols / NR, prods + hoist, hoist ? 1 : 2, gate, cols);
    if (hoist) {
      const float* p = xp.data() + (item * kBlock + t % kBlock) * N * cols;
      for (int64_t i = 0; i < na; ++i)
        for (int64_t j = 0; j < cols; ++j) gate[i * cols + j] += p[order.row(i) * cols + j];
    }
    if (r != 0 && !claim()) return false;
    for (int64_t i = na; i < N; ++i) {  // finished rows: the state stays, no gates
      const int64_t n = order.row(i);
      std::memcpy(hs + (row0 + n) * H + u0, hprev + n * H + u0, nu * sizeof(E));
      if (cs_all)
        std::memcpy(cs + (row0 + n) * H + u0, c.data() + (d * N + n) * H + u0,
                    nu * sizeof(float));
      if (acts != nullptr)
        for (int64_t g = 0; g < 4; ++g)
          std::fill_n(acts + (row0 + n) * G4 + g * H + u0, nu, 0.0f);
    }
    const float* bb = bcol.data() + (d * chunks + k) * cols;
    for (int64_t i = 0; i < na; ++i) {
      const int64_t n = order.row(i);
      const bool valid = order.valid(mask, t, N, n);
      const float* z = gate + i * cols;
      const E* hp = hprev + n * H + u0;
      E* h = hs + (row0 + n) * H + u0;
      float* cn = c.data() + (d * N + n) * H + u0;
      float* a = acts == nullptr ? nullptr : acts + (row0 + n) * G4 + u0;
      const int64_t q = kFwdUnits;
      for_columns(nu, [&]<typename V>(int64_t j) {
        const V i_ = sigmoid_approx<V>(load<V>(z + j) + load<V>(bb + j));
        const V f_ = sigmoid_approx<V>(load<V>(z + q + j) + load<V>(bb + q + j));
        const V g_ = tanh_approx<V>(load<V>(z + 2 * q + j) + load<V>(bb + 2 * q + j));
        const V o_ = sigmoid_approx<V>(load<V>(z + 3 * q + j) + load<V>(bb + 3 * q + j));
        const V c_new = f_ * load<V>(cn + j) + i_ * g_;
        if (a != nullptr) {
          store<V>(a + j, i_);
          store<V>(a + H + j, f_);
          store<V>(a + 2 * H + j, g_);
          store<V>(a + 3 * H + j, o_);
        }
        if (valid) {  // else the state stays: h and c as they were
          store<V>(cn + j, c_new);
          store<V>(h + j, o_ * tanh_approx<V>(c_new));
        } else {
          store<V>(h + j, load<V>(hp + j));
        }
      });
      if (cs_all) std::memcpy(cs + (row0 + n) * H + u0, cn, nu * sizeof(float));
    }
    return true;
  }, runs_for_batch(N, threads, small_batch));
  if (!cs_all) std::memcpy(cs, c.data(), D * N * H * sizeof(float));
}

// ---------------------------------------------------------------------------------------------
// Backward: the gate pre-activation gradients dz (T, D, N, 4H), their sum over steps and
// sequences db (D, 4H) (the bias gradient), and dh0, dc0. dhs is the gradient of every step's
// h; dcs of every step's c (dcs_all) or of the last one only. dz is stored in the element type
// (in bfloat16 rounded, as the lax.scan path rounds it for its GEMMs with W_hh, W_ih and the
// inputs), db sums the float32 values. In float32 dz may be the very buffer of acts: each
// element of a step's gates is read before its dz is written, and the steps of a sequence that
// has ended (prefix mask) are left as they are, zero already (the forward's acts there).
//
// Item (t, chunk) first forms the chunk's dh_t = dz_{t+1}·W_hh[:, chunk] (plus what frozen
// steps pass through), then the chunk's gate gradients at step t. A last row of items, t = -1,
// forms dh0. The items of one chunk run one after the other (each waits for the step before),
// so each adds to its own slice of db without a race.

template <typename E>
void backward(const Dims& s, ffi::ThreadPool& pool, int threads, int64_t small_batch,
              const std::vector<Span>& fresh, const E* dhs, const float* dcs, bool dcs_all,
              const float* acts, const float* cs, const float* c0, const E* w_hh,
              const int8_t* mask, E* dz, float* db, float* dh0, float* dc0) {
  const int64_t T = s.T, D = s.D, N = s.N, H = s.H, G4 = 4 * H;
  const int64_t chunks = (H + kBwdUnits - 1) / kBwdUnits, cols = round_up(kBwdUnits, NR);
  // dz over the saved gates: the rows of ended sequences hold the zeros the forward wrote.
  const bool in_place = static_cast<const void*>(dz) == static_cast<const void*>(acts);
  const int64_t wc = panel_size<E>(G4) * (cols / NR);  // elements per chunk of packed W_hh
  const Unzeroed<E> bp(static_cast<size_t>(D * chunks * wc));
  const auto pack = [&](int64_t d, int64_t k) {  // by the first item that uses it (see forward)
    const int64_t u0 = k * kBwdUnits, nu = std::min(kBwdUnits, H - u0);
    E* out = bp.data() + (d * chunks + k) * wc;
    pack_cols(w_hh + d * G4 * H, G4, H, u0, nu, out);
    // A last chunk of fewer units fills fewer panels; the GEMM reads all of them: zeros.
    std::fill(out + round_up(nu, NR) / NR * panel_size<E>(G4), out + wc, E{});
  };
  std::fill(db, db + D * G4, 0.0f);
  // Shared state per direction: the gradients w.r.t. the cell state after the current step
  // (dc), and the dh that frozen steps pass through (pass).
  std::vector<float> dc(static_cast<size_t>(D * N * H), 0.0f), pass(dc.size(), 0.0f);
  if (!dcs_all) std::memcpy(dc.data(), dcs, D * N * H * sizeof(float));
  // Row r: step t = T - 1 - r, and r = T the dh0 row; item d·chunks + k of a row is chunk k of
  // direction d (both directions in one row, as in forward). Row i of the chunk's dh is batch
  // row order.row(i) (see Order).
  const Order order(mask, T, N);
  // As in forward: the GEMM to scratch, the results once claimed, packing claimed first.
  run_items(pool, threads, Prefault(fresh), T + 1, D * chunks, [&](int64_t row, int64_t item,
                                                                  Scratch& scratch,
                                                                  Claim claim) {
    const int64_t d = item / chunks, k = item % chunks, t = T - 1 - row;
    const int64_t u0 = k * kBwdUnits, nu = std::min(kBwdUnits, H - u0);
    if (t == T - 1 && !claim()) return false;
    if (t == T - 1) pack(d, k);
    float* dh = scratch.get(static_cast<size_t>(N * cols));  // dh after step t, this chunk
    if (t >= 0) {  // what the gate arithmetic below reads, fetched while the GEMM runs
      const int64_t row0 = (t * D + d) * N, na = order.active[t];
      for (int64_t i = 0; i < N; ++i) {
        const int64_t n = order.row(i), r = row0 + n;
        prefetch(dhs + r * H + u0, nu * sizeof(E));
        if (dcs_all) prefetch(dcs + r * H + u0, nu * sizeof(float));
        if (i >= na) continue;
        for (int64_t g = 0; g < 4; ++g) prefetch(acts + r * G4 + g * H + u0, nu * sizeof(float));
        prefetch(cs + r * H + u0, nu * sizeof(float));
        prefetch(t == 0 ? c0 + (d * N + n) * H + u0 : cs + (r - D * N) * H + u0,
                 nu * sizeof(float));
      }
    }
    // dz_{t+1} is zero for the rows that step t + 1 does not run: only the others' GEMM.
    const int64_t na_next = t == T - 1 ? 0 : order.active[t + 1];
    if (na_next > 0) {
      const Product<E> prod{dz + ((t + 1) * D + d) * N * G4, G4, static_cast<int>(G4),
                            bp.data() + (d * chunks + k) * wc, order.rows()};
      gemm_packed(na_next, cols / NR, &prod, 1, dh, cols);
    }
    for (int64_t i = na_next; i < N; ++i) std::fill(dh + i * cols, dh + i * cols + nu, 0.0f);
    for (int64_t i = 0; i < N; ++i) {
      const float* ps = pass.data() + (d * N + order.row(i)) * H + u0;
      for (int64_t j = 0; j < nu; ++j) dh[i * cols + j] += ps[j];
    }
    if (t != T - 1 && !claim()) return false;
    if (t < 0) {  // the dh0 row: the gradients w.r.t. h_0 and c_0
      for (int64_t i = 0; i < N; ++i) {
        const int64_t n = order.row(i);
        std::memcpy(dh0 + (d * N + n) * H + u0, dh + i * cols, nu * sizeof(float));
        std::memcpy(dc0 + (d * N + n) * H + u0, dc.data() + (d * N + n) * H + u0,
                    nu * sizeof(float));
      }
      return true;
    }
    const int64_t row0 = (t * D + d) * N, na = order.active[t];
    for (int64_t i = 0; i < N; ++i) {
      const int64_t n = order.row(i);
      const bool valid = i < na && order.valid(mask, t, N, n), zero_dz = !in_place || i < na;
      const float* a = acts + (row0 + n) * G4 + u0;
      const float* ct = cs + (row0 + n) * H + u0;
      const float* cp = t == 0 ? c0 + (d * N + n) * H + u0 : cs + (row0 - D * N + n) * H + u0;
      const E* gh = dhs + (row0 + n) * H + u0;
      const float* gc = dcs_all ? dcs + (row0 + n) * H + u0 : nullptr;
      E* dzr = dz + (row0 + n) * G4 + u0;
      float* dbr = db + d * G4 + u0;
      const float* dhn = dh + i * cols;
      float* dcn = dc.data() + (d * N + n) * H + u0;
      float* ps = pass.data() + (d * N + n) * H + u0;
      for_columns(nu, [&]<typename V>(int64_t j) {
        const auto put = [&](int64_t gate, V v) {
          store<V>(dzr + gate * H + j, v);
          store<V>(dbr + gate * H + j, load<V>(dbr + gate * H + j) + v);
        };
        const V dh_in = load<V>(dhn + j) + load<V>(gh + j);
        const V dc_in = gc == nullptr ? load<V>(dcn + j) : load<V>(dcn + j) + load<V>(gc + j);
        if (valid) {
          const V i_ = load<V>(a + j), f_ = load<V>(a + H + j);
          const V g_ = load<V>(a + 2 * H + j), o_ = load<V>(a + 3 * H + j);
          const V tc = tanh_approx<V>(load<V>(ct + j));
          const V dct = dc_in + dh_in * o_ * (1.0f - tc * tc);
          put(0, dct * g_ * i_ * (1.0f - i_));
          put(1, dct * load<V>(cp + j) * f_ * (1.0f - f_));
          put(2, dct * i_ * (1.0f - g_ * g_));
          put(3, dh_in * tc * o_ * (1.0f - o_));
          store<V>(dcn + j, dct * f_);
          store<V>(ps + j, V{});
        } else {  // a frozen step: no gate gradient, dh and dc pass through unchanged
          if (zero_dz)
            for (int64_t gate = 0; gate < 4; ++gate) store<V>(dzr + gate * H + j, V{});
          store<V>(dcn + j, dc_in);
          store<V>(ps + j, dh_in);
        }
      });
    }
    return true;
  }, runs_for_batch(N, threads, small_batch));
}

// ---------------------------------------------------------------------------------------------
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
// direction and block; then a row of items, one per direction and block of kWgRows gate rows,
// copies its gate columns of the block's dz into MR-wide slivers and adds the products into its
// rows of a float32 accumulator (wg_micro), which the last block's items copy out. The packed
// panels of a few blocks (a superblock, at most about 4 MiB) are made at a time.
// The input gradient is a call of its own (input_grad), which XLA leaves out where nothing
// needs it (the first layer's input is data).

constexpr int64_t kWgK = 256, kWgRows = 8 * MR, kDxSteps = 4;
constexpr int64_t kWgPackBytes = int64_t{4} << 20, kPrefetch = 8;

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
// panel, K × NR.
inline void wg_micro(const float* __restrict A, const float* __restrict B, int64_t K,
                     float* __restrict C, int64_t ldc) {
  vec acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    acc0[i] = *reinterpret_cast<const vec_u*>(C + i * ldc);
    acc1[i] = *reinterpret_cast<const vec_u*>(C + i * ldc + VW);
  }
  for (int64_t k = 0; k < K; ++k) {
    const vec b0 = *reinterpret_cast<const vec_u*>(B + k * NR);
    const vec b1 = *reinterpret_cast<const vec_u*>(B + k * NR + VW);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float a = A[k * MR + i];
      acc0[i] += a * b0;
      acc1[i] += a * b1;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    *reinterpret_cast<vec_u*>(C + i * ldc) = acc0[i];
    *reinterpret_cast<vec_u*>(C + i * ldc + VW) = acc1[i];
  }
}

void weight_grads(const Dims& s, ffi::ThreadPool& pool, int threads, const float* dz,
                  const float* x, const float* hs, const float* h0, const int8_t* mask,
                  float* dw_ih, float* dw_hh) {
  const int64_t T = s.T, D = s.D, N = s.N, I = s.I, H = s.H, G4 = 4 * H;
  // The valid steps, t-major: t·N + n.
  std::vector<int64_t> valid;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n)
      if (mask == nullptr || mask[t * N + n] != 0) valid.push_back(t * N + n);
  const int64_t K = static_cast<int64_t>(valid.size());
  const int64_t PI = (I + NR - 1) / NR, PH = (H + NR - 1) / NR, P = PI + PH, ldc = P * NR;
  const int64_t G4p = round_up(G4, kWgRows), gblocks = G4p / kWgRows;
  std::vector<float> acc(static_cast<size_t>(D * G4p * ldc), 0.0f);
  // Blocks of kWgK steps; a superblock of `per` blocks is packed at a time.
  const int64_t blocks = (K + kWgK - 1) / kWgK;
  const int64_t per = std::max<int64_t>(
      1, std::min<int64_t>(blocks, kWgPackBytes / (D * P * kWgK * NR * sizeof(float))));
  const int64_t supers = (blocks + per - 1) / per;
  std::vector<float> packed(static_cast<size_t>(D * per * P * kWgK * NR));
  // Panel p of block j (of the superblock) of direction d.
  const auto panel = [&](int64_t d, int64_t j, int64_t p) {
    return packed.data() + ((d * per + j) * P + p) * kWgK * NR;
  };
  const auto row_of = [&](int64_t v, int64_t d) {  // the row of step `valid[v]` in (T, D, N, ·)
    const int64_t t = valid[v] / N, n = valid[v] % N;
    return (t * D + d) * N + n;
  };
  if (K > 0) {
    const int64_t chunks = std::max(D * per, D * gblocks);
    run_items(pool, threads, Prefault({}), 2 * supers, chunks, [&](int64_t row, int64_t k,
                                                                  Scratch& scratch) {
      const int64_t sb = row / 2, b0 = sb * per, b1 = std::min(blocks, b0 + per);
      if (row % 2 == 0) {  // pack the panels of block b0 + k % per of direction d
        const int64_t d = k / per, b = b0 + k % per;
        if (d >= D || b >= b1) return;
        // Sample by sample, whole rows of x and h: read in order, as the prefetchers like.
        for (int64_t v = b * kWgK, e = std::min(K, v + kWgK); v < e; ++v) {
          const int64_t t = valid[v] / N, n = valid[v] % N, j = v - b * kWgK;
          const float* xr = x + row_of(v, d) * I;
          const float* hr = t == 0 ? h0 + (d * N + n) * H : hs + row_of(v, d) * H - D * N * H;
          for (int64_t p = 0; p < P; ++p) {
            const bool is_x = p < PI;
            const int64_t c0 = (is_x ? p : p - PI) * NR;
            const int64_t cols = std::min<int64_t>(NR, (is_x ? I : H) - c0);
            float* out = panel(d, b - b0, p) + j * NR;
            copy_padded<NR>(out, (is_x ? xr : hr) + c0, cols);
          }
        }
        return;
      }
      if (k >= D * gblocks) return;
      const int64_t d = k / gblocks, g0 = (k % gblocks) * kWgRows;
      const int64_t rows = std::min(kWgRows, G4 - g0);  // gate rows here; the rest is padding
      float* a = scratch.get(static_cast<size_t>(kWgRows * kWgK));
      float* c = acc.data() + (d * G4p + g0) * ldc;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t v0 = b * kWgK, kb = std::min(K, v0 + kWgK) - v0;
        // a: sliver q (rows g0 + q·MR …) is kb × MR, k-major. Sample by sample: each reads its
        // kWgRows gate columns of dz in one piece, the next samples' fetched ahead (dz rows are
        // far apart, which the prefetchers do not follow).
        for (int64_t v = 0; v < kb; ++v) {
          if (v + kPrefetch < kb)
            prefetch(dz + row_of(v0 + v + kPrefetch, d) * G4 + g0, rows * sizeof(float));
          const float* src = dz + row_of(v0 + v, d) * G4 + g0;
          for (int64_t q = 0; q < kWgRows / MR; ++q) {
            const int64_t r0 = q * MR, nr = std::clamp<int64_t>(rows - r0, 0, MR);
            copy_padded<MR>(a + q * kWgK * MR + v * MR, src + r0, nr);
          }
        }
        for (int64_t p = 0; p < P; ++p) {
          const float* bp = panel(d, b - b0, p);
          for (int64_t q = 0; q < kWgRows / MR; ++q)
            wg_micro(a + q * kWgK * MR, bp, kb, c + q * MR * ldc + p * NR, ldc);
        }
      }
      if (sb == supers - 1) {  // the last superblock: this block of gate rows is complete
        for (int64_t g = 0; g < rows; ++g) {
          std::memcpy(dw_ih + (d * G4 + g0 + g) * I, c + g * ldc, I * sizeof(float));
          std::memcpy(dw_hh + (d * G4 + g0 + g) * H, c + g * ldc + PI * NR, H * sizeof(float));
        }
      }
    });
  } else {
    std::fill(dw_ih, dw_ih + D * G4 * I, 0.0f);
    std::fill(dw_hh, dw_hh + D * G4 * H, 0.0f);
  }
}

// dx = dz·W_ih on the valid rows, zero on the others: items of kDxSteps steps, each step one
// GEMM of its valid rows of dz (through a list of rows) with the packed W_ih.
void input_grad(const Dims& s, ffi::ThreadPool& pool, int threads, const float* dz,
                const float* w_ih, const int8_t* mask, float* dx) {
  const int64_t T = s.T, D = s.D, N = s.N, I = s.I, H = s.H, G4 = 4 * H;
  const int64_t PI = (I + NR - 1) / NR;
  const int64_t wp = panel_size<float>(G4) * PI;  // elements of packed W_ih per direction
  const Unzeroed<float> bw(static_cast<size_t>(D * wp));
  for (int64_t d = 0; d < D; ++d) pack_cols(w_ih + d * G4 * I, G4, I, 0, I, bw.data() + d * wp);
  const int64_t groups = (T + kDxSteps - 1) / kDxSteps;
  const Prefault prefault({{dx, static_cast<size_t>(T * D * N * I) * sizeof(float)}});
  run_items(pool, threads, prefault, 1, D * groups, [&](int64_t, int64_t k, Scratch& scratch) {
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
      gemm_packed(m, PI, &prod, 1, c, PI * NR);
      for (int64_t i = 0; i < m; ++i)
        std::memcpy(dx + ((t * D + d) * N + rows[i]) * I, c + i * PI * NR, I * sizeof(float));
    }
  });
}

// ---------------------------------------------------------------------------------------------
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

ffi::Error invalid(const char* what) {
  return ffi::Error::InvalidArgument(std::string("flax_lstm CPU kernel: ") + what);
}

template <ffi::DataType T>
int64_t count(const ffi::Buffer<T>& b) {
  return static_cast<int64_t>(b.element_count());
}
template <ffi::DataType T>
int64_t count(ffi::Result<ffi::Buffer<T>>& b) {
  return static_cast<int64_t>(b->element_count());
}

// The validity mask is optional: empty means every step of every sequence is valid, otherwise
// it holds one int8 per (t, n).
bool mask_fits(const ffi::Buffer<ffi::S8>& mask, const Dims& s) {
  return count(mask) == 0 || count(mask) == s.T * s.N;
}
const int8_t* mask_data(const ffi::Buffer<ffi::S8>& mask) {
  return count(mask) ? mask.typed_data() : nullptr;
}

// ET is the element type of x, the weights, h0 and hs (F32 or BF16); everything else is F32.
template <ffi::DataType ET>
ffi::Error ForwardImpl(ffi::ThreadPool pool, int64_t threads, int64_t small_batch,
                       ffi::Buffer<ET> x,
                       ffi::Buffer<ET> w_ih, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ET> w_hh,
                       ffi::Buffer<ET> h0, ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S8> mask,
                       ffi::ResultBuffer<ET> hs, ffi::ResultBuffer<ffi::F32> cs,
                       ffi::ResultBuffer<ffi::F32> acts) {
  const auto xd = x.dimensions(), hd = h0.dimensions();
  if (xd.size() != 4 || hd.size() != 3) return invalid("x must be (T, D, N, I), h0 (D, N, H)");
  const Dims s{xd[0], xd[1], xd[2], xd[3], hd[2]};
  const int64_t state = s.D * s.N * s.H, steps = s.T * state;
  if (s.D < 1 || s.N < 1 || s.H < 1 || hd[0] != s.D || hd[1] != s.N || count(c0) != state ||
      count(w_ih) != s.D * 4 * s.H * s.I || count(w_hh) != s.D * 4 * s.H * s.H ||
      count(bias) != s.D * 4 * s.H || count(hs) != steps ||
      (count(cs) != steps && count(cs) != state) ||
      (count(acts) != 4 * steps && count(acts) != 0) || !mask_fits(mask, s))
    return invalid("operand shapes do not agree");
  if (s.T == 0) return ffi::Error::Success();
  const bool cs_all = count(cs) == steps || s.T == 1;
  using E = ffi::NativeType<ET>;
  const std::vector<Span> fresh = {{hs->untyped_data(), count(hs) * sizeof(E)},
                                    {cs->untyped_data(), count(cs) * sizeof(float)},
                                    {acts->untyped_data(), count(acts) * sizeof(float)}};
  forward<E>(s, pool, static_cast<int>(threads), small_batch, fresh, x.typed_data(),
             w_ih.typed_data(), bias.typed_data(), w_hh.typed_data(), h0.typed_data(),
             c0.typed_data(), mask_data(mask), hs->typed_data(), cs->typed_data(), cs_all,
             count(acts) ? acts->typed_data() : nullptr);
  return ffi::Error::Success();
}

template <ffi::DataType ET>
ffi::Error BackwardImpl(ffi::ThreadPool pool, int64_t threads, int64_t small_batch,
                        ffi::Buffer<ET> dhs,
                        ffi::Buffer<ffi::F32> dcs, ffi::Buffer<ffi::F32> acts,
                        ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> c0, ffi::Buffer<ET> w_hh,
                        ffi::Buffer<ffi::S8> mask, ffi::ResultBuffer<ET> dz,
                        ffi::ResultBuffer<ffi::F32> db, ffi::ResultBuffer<ffi::F32> dh0,
                        ffi::ResultBuffer<ffi::F32> dc0) {
  const auto ad = acts.dimensions();
  if (ad.size() != 4 || ad[3] % 4 != 0) return invalid("acts must be (T, D, N, 4H)");
  const Dims s{ad[0], ad[1], ad[2], 0, ad[3] / 4};
  const int64_t state = s.D * s.N * s.H, steps = s.T * state;
  if (s.D < 1 || s.N < 1 || s.H < 1 || count(dhs) != steps || count(cs) != steps ||
      count(c0) != state || count(w_hh) != s.D * 4 * s.H * s.H ||
      (count(dcs) != steps && count(dcs) != state) || count(dz) != 4 * steps ||
      count(db) != s.D * 4 * s.H || count(dh0) != state || count(dc0) != state ||
      !mask_fits(mask, s))
    return invalid("operand shapes do not agree");
  if (s.T == 0) return ffi::Error::Success();
  const bool dcs_all = count(dcs) == steps && s.T > 1;
  // In float32 dz may take the saved gates' buffer (the Python side aliases them): then it is
  // in place.
  using E = ffi::NativeType<ET>;
  std::vector<Span> fresh;
  if (dz->untyped_data() != acts.untyped_data())
    fresh.push_back({dz->untyped_data(), count(dz) * sizeof(E)});
  backward<E>(s, pool, static_cast<int>(threads), small_batch, fresh, dhs.typed_data(),
              dcs.typed_data(), dcs_all, acts.typed_data(), cs.typed_data(), c0.typed_data(),
              w_hh.typed_data(), mask_data(mask),
              dz->typed_data(), db->typed_data(), dh0->typed_data(), dc0->typed_data());
  return ffi::Error::Success();
}

ffi::Error WeightGradsImpl(ffi::ThreadPool pool, int64_t threads, ffi::Buffer<ffi::F32> dz,
                           ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> hs,
                           ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::S8> mask,
                           ffi::ResultBuffer<ffi::F32> dw_ih, ffi::ResultBuffer<ffi::F32> dw_hh) {
  const auto xd = x.dimensions(), hd = h0.dimensions();
  if (xd.size() != 4 || hd.size() != 3) return invalid("x must be (T, D, N, I), h0 (D, N, H)");
  const Dims s{xd[0], xd[1], xd[2], xd[3], hd[2]};
  const int64_t state = s.D * s.N * s.H;
  if (s.D < 1 || s.N < 1 || s.H < 1 || hd[0] != s.D || hd[1] != s.N ||
      count(dz) != 4 * s.T * state || count(hs) != s.T * state ||
      count(dw_ih) != s.D * 4 * s.H * s.I || count(dw_hh) != s.D * 4 * s.H * s.H ||
      !mask_fits(mask, s))
    return invalid("operand shapes do not agree");
  if (s.T == 0 || s.I == 0) {
    std::fill_n(dw_ih->typed_data(), count(dw_ih), 0.0f);
    std::fill_n(dw_hh->typed_data(), count(dw_hh), 0.0f);
    return ffi::Error::Success();
  }
  weight_grads(s, pool, static_cast<int>(threads), dz.typed_data(), x.typed_data(),
               hs.typed_data(), h0.typed_data(), mask_data(mask), dw_ih->typed_data(),
               dw_hh->typed_data());
  return ffi::Error::Success();
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, int64_t threads, ffi::Buffer<ffi::F32> dz,
                         ffi::Buffer<ffi::F32> w_ih, ffi::Buffer<ffi::S8> mask,
                         ffi::ResultBuffer<ffi::F32> dx) {
  const auto zd = dz.dimensions(), wd = w_ih.dimensions();
  if (zd.size() != 4 || wd.size() != 3 || zd[3] % 4 != 0)
    return invalid("dz must be (T, D, N, 4H), w_ih (D, 4H, I)");
  const Dims s{zd[0], zd[1], zd[2], wd[2], zd[3] / 4};
  if (s.D < 1 || s.N < 1 || s.H < 1 || wd[0] != s.D || wd[1] != 4 * s.H ||
      count(dx) != s.T * s.D * s.N * s.I || !mask_fits(mask, s))
    return invalid("operand shapes do not agree");
  if (s.T == 0 || s.I == 0) return ffi::Error::Success();
  input_grad(s, pool, static_cast<int>(threads), dz.typed_data(), w_ih.typed_data(),
             mask_data(mask), dx->typed_data());
  return ffi::Error::Success();
}

template <ffi::DataType ET>
ffi::Error TransposeImpl(ffi::ThreadPool pool, int64_t threads, ffi::Buffer<ET> in,
                         ffi::ResultBuffer<ET> out) {
  const auto d = in.dimensions();
  if (d.size() != 2 || out->dimensions().size() != 2 || out->dimensions()[0] != d[1] ||
      out->dimensions()[1] != d[0])
    return invalid("transpose: in must be (R, C) and out (C, R)");
  if (d[0] == 0 || d[1] == 0) return ffi::Error::Success();
  transpose(pool, static_cast<int>(threads), in.typed_data(), d[0], d[1], out->typed_data());
  return ffi::Error::Success();
}

}  // namespace

#define FLAX_LSTM_TRANSPOSE_BINDING(ET) \
  ffi::Ffi::Bind()                      \
      .Ctx<ffi::ThreadPool>()           \
      .Attr<int64_t>("threads")         \
      .Arg<ffi::Buffer<ET>>()           \
      .Ret<ffi::Buffer<ET>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLstmTranspose, TransposeImpl<ffi::F32>,
                              FLAX_LSTM_TRANSPOSE_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLstmTransposeBf16, TransposeImpl<ffi::BF16>,
                              FLAX_LSTM_TRANSPOSE_BINDING(ffi::BF16));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLstmWeightGrads, WeightGradsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Attr<int64_t>("threads")
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dz
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::S8>>()   // mask
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dw_ih
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dw_hh
);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLstmInputGrad, InputGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Attr<int64_t>("threads")
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dz
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih
                                  .Arg<ffi::Buffer<ffi::S8>>()   // mask
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
);

// The operands of the two calls; ET is the element type of x, the weights, h0, hs, dhs and dz.
#define FLAX_LSTM_FORWARD_BINDING(ET)                                       \
  ffi::Ffi::Bind()                                                          \
      .Ctx<ffi::ThreadPool>()                                               \
      .Attr<int64_t>("threads")                                             \
      .Attr<int64_t>("small_batch")                                         \
      .Arg<ffi::Buffer<ET>>()        /* x */                                \
      .Arg<ffi::Buffer<ET>>()        /* w_ih */                             \
      .Arg<ffi::Buffer<ffi::F32>>()  /* bias */                             \
      .Arg<ffi::Buffer<ET>>()        /* w_hh */                             \
      .Arg<ffi::Buffer<ET>>()        /* h0 */                               \
      .Arg<ffi::Buffer<ffi::F32>>()  /* c0 */                               \
      .Arg<ffi::Buffer<ffi::S8>>()   /* mask */                             \
      .Ret<ffi::Buffer<ET>>()        /* hs */                               \
      .Ret<ffi::Buffer<ffi::F32>>()  /* cs */                               \
      .Ret<ffi::Buffer<ffi::F32>>()  /* acts */

#define FLAX_LSTM_BACKWARD_BINDING(ET)                                      \
  ffi::Ffi::Bind()                                                          \
      .Ctx<ffi::ThreadPool>()                                               \
      .Attr<int64_t>("threads")                                             \
      .Attr<int64_t>("small_batch")                                         \
      .Arg<ffi::Buffer<ET>>()        /* dhs */                              \
      .Arg<ffi::Buffer<ffi::F32>>()  /* dcs */                              \
      .Arg<ffi::Buffer<ffi::F32>>()  /* acts */                             \
      .Arg<ffi::Buffer<ffi::F32>>()  /* cs */                               \
      .Arg<ffi::Buffer<ffi::F32>>()  /* c0 */                               \
      .Arg<ffi::Buffer<ET>>()        /* w_hh */                             \
      .Arg<ffi::Buffer<ffi::S8>>()   /* mask */                             \
      .Ret<ffi::Buffer<ET>>()        /* dz */                               \
      .Ret<ffi::Buffer<ffi::F32>>()  /* db */                               \
      .Ret<ffi::Buffer<ffi::F32>>()  /* dh0 */                              \
      .Ret<ffi::Buffer<ffi::F32>>()  /* dc0 */

// What the bfloat16 step GEMMs run on (the Python side reports it, flax_lstm.kernel.info):
// 1 AMX tiles, 2 their emulation (a test build), 0 the CPU has no AMX-BF16, -1 disabled by
// FLAX_LSTM_AMX, -2 Linux refused the tile data permission, -3 no AMX path in this build.
extern "C" __attribute__((visibility("default"))) int FlaxLstmAmx(void) {
#if FLAX_LSTM_AMX
  return amx::state();
#else
  return -3;
#endif
}

#if FLAX_LSTM_AMX == 2
// The emulated tile products done so far, in the whole process: the tests see that the tile
// path ran.
extern "C" __attribute__((visibility("default"))) int64_t FlaxLstmAmxDots(void) {
  return amx::emulated_dots.load(std::memory_order_relaxed);
}
#endif

// The items that a thread computed again and wrote for a teammate that held them (see run_items),
// in the whole process: the tests see that stealing ran.
extern "C" __attribute__((visibility("default"))) int64_t FlaxLstmStolenItems(void) {
  return stolen_items.load(std::memory_order_relaxed);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLstmForward, ForwardImpl<ffi::F32>,
                              FLAX_LSTM_FORWARD_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLstmBackward, BackwardImpl<ffi::F32>,
                              FLAX_LSTM_BACKWARD_BINDING(ffi::F32));

// The bfloat16 variants exist only where the CPU has AVX512_BF16; the Python side looks for
// the symbols and runs bfloat16 on the lax.scan path without them.
#if FLAX_LSTM_BF16
XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLstmForwardBf16, ForwardImpl<ffi::BF16>,
                              FLAX_LSTM_FORWARD_BINDING(ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLstmBackwardBf16, BackwardImpl<ffi::BF16>,
                              FLAX_LSTM_BACKWARD_BINDING(ffi::BF16));
#endif
