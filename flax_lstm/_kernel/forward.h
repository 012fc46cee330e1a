// The forward call: h_t and c_t of every step (and the activated gates, for the backward).
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "batch.h"
#include "buffers.h"
#include "gate_math.h"
#include "gemm.h"
#include "work_items.h"

namespace {

// Forward: h_t, c_t for every step, and the activated gates when `acts` is given. Each step's
// pre-activations x_t·W_ihᵀ + h_{t-1}·W_hhᵀ are one GEMM over both products, so no (T, N, 4H)
// input projection is ever stored. cs holds every step's cell state (T, D, N, H), or only the
// last one (D, N, H) when cs_all is false.

// Chunks of 16 hidden units, i.e. 64 gate columns, two packed panels (a whole number of
// vectors for the gate arithmetic). A last chunk of nu < 16 units has 4·nu columns (see
// ForwardWeights).
constexpr int64_t kFwdUnits = 16;
// Small batches, of at most `small_batch` sequences (rows of a step's GEMM; an attribute of the
// forward and backward calls, chosen on the Python side: flax_lstm/_kernel/tuning.py), hoist the
// input projection out of the steps in blocks of kBlock steps (see forward), and share each
// step's chunks among the threads in fixed runs (see run_items). Measured against the general
// scheme: docs/performance/design.md ("The CPU kernel", small batches).
constexpr int64_t kBlock = 64;

// The LSTM cell on one row of a chunk (nu ≤ kFwdUnits units): z holds the row's GEMM output,
// gate g's pre-activations at z + g·nu, and bb the chunk's biases in the same layout;
// cn is the row's cell state, updated in place; hp its h before the step and h where the
// step's h goes; a, where not null, takes the activated gates (gate g at a + g·H). At a masked
// step (not valid) h and c stay as they were.
template <typename E>
inline void cell_forward(const float* z, const float* bb, float* cn, const E* hp, E* h, float* a,
                         int64_t H, int64_t nu, bool valid) {
  for_columns(nu, [&](auto at) {
    const vec i_ = sigmoid_approx(load(z, at) + load(bb, at));
    const vec f_ = sigmoid_approx(load(z + nu, at) + load(bb + nu, at));
    const vec g_ = tanh_approx(load(z + 2 * nu, at) + load(bb + 2 * nu, at));
    const vec o_ = sigmoid_approx(load(z + 3 * nu, at) + load(bb + 3 * nu, at));
    const vec c_new = f_ * load(cn, at) + i_ * g_;
    if (a != nullptr) {
      store(a, at, i_);
      store(a + H, at, f_);
      store(a + 2 * H, at, g_);
      store(a + 3 * H, at, o_);
    }
    if (valid) {  // else the state stays: h and c as they were
      store(cn, at, c_new);
      store(h, at, o_ * tanh_approx(c_new));
    } else {
      store(h, at, load(hp, at));
    }
  });
}

// Small batches: the input projection x_t·W_ihᵀ of direction d's steps [t0, t0 + kBlock) for
// one chunk (its packed W_ih at pi, `cols` columns), one GEMM with the steps as rows, into xp
// (kBlock · N rows, leading dimension ld). Only the steps that some row still runs (none, past
// the longest sequence).
template <typename E>
inline void project_block(const Dims& s, const E* x, int64_t d, int64_t t0, const Order& order,
                          const E* pi, int64_t cols, int64_t ld, Scratch& scratch, float* xp) {
  const int64_t T = s.T, D = s.D, N = s.N, I = s.I;
  int64_t nt = std::min(kBlock, T - t0);
  while (nt > 0 && order.active[t0 + nt - 1] == 0) --nt;
  if (nt == 0) return;
  const E* a = x + (t0 * D + d) * N * I;
  if (D > 1) {  // the direction's rows are not contiguous: gather them
    E* g = scratch.get_rows<E>(static_cast<size_t>(nt * N * I));
    for (int64_t j = 0; j < nt; ++j)
      std::memcpy(g + j * N * I, x + ((t0 + j) * D + d) * N * I, N * I * sizeof(E));
    a = g;
  }
  const Product<E> prod{a, I, static_cast<int>(I), pi};
  gemm_packed(nt * N, cols, &prod, 1, xp, ld);
}

// The packed weights of every direction and chunk: column g·nu + j of a chunk of nu units is
// gate g of its unit j (a row of W). A chunk of 16 units fills two panels; the last one, where
// H is not a multiple of 16, fills 4·nu columns, so that its GEMM computes those (in whole
// vectors: gemm_packed) rather than 64. A chunk's weights are packed by the first item that
// uses them (its direction's first row, which every later row waits for): the team shares the
// packing, and with small batches a thread packs the chunks it keeps (run_groups) into its own
// core's cache.
template <typename E>
struct ForwardWeights {
  static constexpr int64_t cols = 4 * kFwdUnits;  // a whole chunk's, and every chunk's room
  const E* src_ih;        // W_ih, (D, 4H, I), as given
  const E* src_hh;        // W_hh, (D, 4H, H)
  const float* src_bias;  // (D, 4H)
  int64_t I, H, chunks;
  int64_t wi, wh;  // elements per chunk of packed W_ih, W_hh
  Unzeroed<E> ih, hh;
  Unzeroed<float> b;  // (D, chunks, cols)

  ForwardWeights(const Dims& s, const E* w_ih, const E* w_hh, const float* bias)
      : src_ih(w_ih), src_hh(w_hh), src_bias(bias), I(s.I), H(s.H),
        chunks((s.H + kFwdUnits - 1) / kFwdUnits),
        wi(panel_size<E>(s.I) * (cols / NR)), wh(panel_size<E>(s.H) * (cols / NR)),
        ih(static_cast<size_t>(s.D * chunks * wi)), hh(static_cast<size_t>(s.D * chunks * wh)),
        b(static_cast<size_t>(s.D * chunks * cols)) {}
  // Where chunk k of direction d is packed (written by pack, read by the steps).
  E* packed_ih(int64_t d, int64_t k) const { return ih.data() + (d * chunks + k) * wi; }
  E* packed_hh(int64_t d, int64_t k) const { return hh.data() + (d * chunks + k) * wh; }
  float* packed_bias(int64_t d, int64_t k) const { return b.data() + (d * chunks + k) * cols; }
  // Units of chunk k, and its columns.
  int64_t units(int64_t k) const { return std::min(kFwdUnits, H - k * kFwdUnits); }
  int64_t columns(int64_t k) const { return 4 * units(k); }

  void pack(int64_t d, int64_t k) const {
    const int64_t G4 = 4 * H, u0 = k * kFwdUnits, nu = units(k);
    const auto row_of = [&](int64_t col) { return (col / nu) * H + u0 + col % nu; };
    pack_rows(src_ih + d * G4 * I, I, columns(k), row_of, packed_ih(d, k));
    pack_rows(src_hh + d * G4 * H, H, columns(k), row_of, packed_hh(d, k));
    float* bias = packed_bias(d, k);
    for (int64_t col = 0; col < columns(k); ++col) bias[col] = src_bias[d * G4 + row_of(col)];
  }
};

// Where a forward step writes, row by row (row r of (T, D, N, ·)), at a chunk's units [u0, u0 +
// nu): h (hs), every step's cell state (cs, or nullptr where only the last one is kept) and the
// activated gates (acts, or nullptr; gate g of a row at + g·H).
template <typename E>
struct ForwardOutputs {
  E* hs;
  float* cs;
  float* acts;
  int64_t H;

  // Asks for a row's lines, written after the step's GEMM.
  void prefetch(int64_t r, int64_t u0, int64_t nu) const {
    prefetch_w(hs + r * H + u0, nu * sizeof(E));
    if (cs != nullptr) prefetch_w(cs + r * H + u0, nu * sizeof(float));
    if (acts != nullptr)
      for (int64_t g = 0; g < 4; ++g) prefetch_w(acts + (4 * r + g) * H + u0, nu * sizeof(float));
  }
  // The row's cell state c, where every step's is kept.
  void cell(int64_t r, const float* c, int64_t u0, int64_t nu) const {
    if (cs != nullptr) std::memcpy(cs + r * H + u0, c, nu * sizeof(float));
  }
  // A row whose sequence has ended: the state hp, c carried through, no gates.
  void carry(int64_t r, const E* hp, const float* c, int64_t u0, int64_t nu) const {
    std::memcpy(hs + r * H + u0, hp, nu * sizeof(E));
    cell(r, c, u0, nu);
    if (acts != nullptr)
      for (int64_t g = 0; g < 4; ++g) std::fill_n(acts + (4 * r + g) * H + u0, nu, 0.0f);
  }
  E* h(int64_t r, int64_t u0) const { return hs + r * H + u0; }
  float* gates(int64_t r, int64_t u0) const {
    return acts == nullptr ? nullptr : acts + 4 * r * H + u0;
  }
};

template <typename E>
void forward(const Dims& s, ffi::ThreadPool& pool, int threads, int64_t small_batch,
             const std::vector<Span>& fresh, const E* x, const E* w_ih, const float* bias,
             const E* w_hh, const E* h0, const float* c0, const int8_t* mask, E* hs, float* cs,
             bool cs_all, float* acts) {
  const int64_t T = s.T, D = s.D, N = s.N, I = s.I, H = s.H;
  const ForwardWeights<E> w(s, w_ih, w_hh, bias);
  const int64_t chunks = w.chunks, cols = w.cols;
  const ForwardOutputs<E> out{hs, cs_all ? cs : nullptr, acts, H};
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
    if (r == 0) w.pack(d, k);
    if (projection) {
      project_block(s, x, d, r / (kBlock + 1) * kBlock, order, w.packed_ih(d, k), w.columns(k),
                    cols, scratch, xp.data() + item * kBlock * N * cols);
      return true;
    }
    const int64_t u0 = k * kFwdUnits, nu = w.units(k), ncols = w.columns(k);
    const int64_t row0 = (t * D + d) * N;  // first row of step t, direction d
    const E* hprev = t == 0 ? h0 + d * N * H : hs + (row0 - D * N) * H;
    const int64_t na = order.active[t];  // gate row i is batch row order.row(i)
    for (int64_t i = 0; i < N; ++i) out.prefetch(row0 + order.row(i), u0, nu);
    const Product<E> prods[2] = {
        {x + row0 * I, I, static_cast<int>(I), w.packed_ih(d, k), order.rows()},
        {hprev, H, static_cast<int>(H), w.packed_hh(d, k), order.rows()}};
    float* gate = scratch.get(static_cast<size_t>(N * cols));
    gemm_packed(na, ncols, prods + hoist, hoist ? 1 : 2, gate, cols);
    if (hoist) {
      const float* p = xp.data() + (item * kBlock + t % kBlock) * N * cols;
      for (int64_t i = 0; i < na; ++i)
        for (int64_t j = 0; j < ncols; ++j) gate[i * cols + j] += p[order.row(i) * cols + j];
    }
    if (r != 0 && !claim()) return false;
    for (int64_t i = na; i < N; ++i) {  // finished rows: the state stays, no gates
      const int64_t n = order.row(i);
      out.carry(row0 + n, hprev + n * H + u0, c.data() + (d * N + n) * H + u0, u0, nu);
    }
    for (int64_t i = 0; i < na; ++i) {
      const int64_t n = order.row(i), row = row0 + n;
      float* cn = c.data() + (d * N + n) * H + u0;
      cell_forward(gate + i * cols, w.packed_bias(d, k), cn, hprev + n * H + u0, out.h(row, u0),
                   out.gates(row, u0), H, nu, order.valid(mask, t, N, n));
      out.cell(row, cn, u0, nu);
    }
    return true;
  }, runs_for_batch(N, threads, small_batch));
  if (!cs_all) std::memcpy(cs, c.data(), D * N * H * sizeof(float));
}

}  // namespace
