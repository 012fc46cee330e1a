// The backward call: the gate gradients dz of every step, the bias gradient, dh0 and dc0.
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

// Chunks of 32 hidden units, one panel of dh (two with AVX2), or of 16 where those share a step
// more evenly among the threads (chunk_units): a chunk of 16 is half a panel of dh on AVX-512.
constexpr int64_t kBwdUnits = 32;

// Where one row of a chunk at step t of the backward reads and writes, each at the chunk's first
// unit (gate g of acts, dz and db at + g·H).
template <typename E>
struct BackwardRow {
  const float* dh;      // dz_{t+1}·W_hh for the row (and what frozen steps passed through)
  const E* dhs;         // the gradient of the step's h
  const float* dcs;     // the gradient of the step's c, or nullptr
  const float* acts;    // the forward's activated gates
  const float* c;       // the step's cell state
  const float* c_prev;  // the cell state before the step
  float* dc;            // the gradient of the cell state after the step, updated for the one before
  float* pass;          // the dh that frozen steps pass on
  E* dz;                // the gate pre-activation gradients
  float* db;            // the bias gradient, summed over rows and steps

  // Asks for what the row's gate arithmetic reads (a row that does not run the step reads only
  // what passes through), fetched while the step's GEMM runs.
  void prefetch_inputs(int64_t H, int64_t nu, bool runs) const {
    prefetch(dhs, nu * sizeof(E));
    if (dcs != nullptr) prefetch(dcs, nu * sizeof(float));
    if (!runs) return;
    for (int64_t g = 0; g < 4; ++g) prefetch(acts + g * H, nu * sizeof(float));
    prefetch(c, nu * sizeof(float));
    prefetch(c_prev, nu * sizeof(float));
  }
};

// The LSTM cell's gradients on one row of a chunk (nu ≤ kBwdUnits units). At a frozen step (not
// valid) there is no gate gradient: dh and dc pass through unchanged, and dz is zeroed where
// zero_dz says it does not already hold zeros.
template <typename E>
inline void cell_backward(const BackwardRow<E>& row, int64_t H, int64_t nu, bool valid,
                          bool zero_dz) {
  for_columns(nu, [&](auto at) {
    const auto put = [&](int64_t gate, vec v) {
      store(row.dz + gate * H, at, v);
      store(row.db + gate * H, at, load(row.db + gate * H, at) + v);
    };
    const vec dh_in = load(row.dh, at) + load(row.dhs, at);
    const vec dc = load(row.dc, at);
    const vec dc_in = row.dcs == nullptr ? dc : dc + load(row.dcs, at);
    if (valid) {
      const float* a = row.acts;
      const vec i_ = load(a, at), f_ = load(a + H, at);
      const vec g_ = load(a + 2 * H, at), o_ = load(a + 3 * H, at);
      const vec tc = tanh_approx(load(row.c, at));
      const vec dct = dc_in + dh_in * o_ * (1.0f - tc * tc);
      put(0, dct * g_ * i_ * (1.0f - i_));
      put(1, dct * load(row.c_prev, at) * f_ * (1.0f - f_));
      put(2, dct * i_ * (1.0f - g_ * g_));
      put(3, dh_in * tc * o_ * (1.0f - o_));
      store(row.dc, at, dct * f_);
      store(row.pass, at, vec{});
    } else {  // a frozen step: no gate gradient, dh and dc pass through unchanged
      if (zero_dz)
        for (int64_t gate = 0; gate < 4; ++gate) store(row.dz + gate * H, at, vec{});
      store(row.dc, at, dc_in);
      store(row.pass, at, dh_in);
    }
  });
}

// The packed W_hh of every direction and chunk (`units` units, at most `cols` columns of dh),
// packed by the first item that uses it, as the forward's (ForwardWeights).
template <typename E>
struct BackwardWeights {
  static constexpr int64_t cols = round_up(kBwdUnits, NR);
  const E* src;  // W_hh, (D, 4H, H), as given
  int64_t H, units, chunks;
  int64_t wc;  // elements per chunk of packed W_hh
  Unzeroed<E> packed_all;

  BackwardWeights(const Dims& s, const E* w_hh, int threads)
      : src(w_hh), H(s.H),
        // bfloat16 keeps chunks of 32: on AMX, gemm_packed computes whole panels
        units(std::is_same_v<E, float> ? chunk_units(s, threads, kBwdUnits) : kBwdUnits),
        chunks((s.H + units - 1) / units), wc(panel_size<E>(4 * s.H) * (cols / NR)),
        packed_all(static_cast<size_t>(s.D * chunks * wc)) {}
  // Chunk k's first unit, and its units (at most kBwdUnits, said to the compiler: the gate
  // arithmetic's loop then compiles as for chunks of a fixed size).
  int64_t first(int64_t k) const { return k * units; }
  int64_t units_of(int64_t k) const { return std::min(kBwdUnits, std::min(units, H - k * units)); }
  // Where chunk k of direction d is packed (written by pack, read by chunk_dh).
  E* packed(int64_t d, int64_t k) const { return packed_all.data() + (d * chunks + k) * wc; }

  void pack(int64_t d, int64_t k) const {
    const int64_t G4 = 4 * H, u0 = first(k), nu = units_of(k);
    E* out = packed(d, k);
    pack_cols(src + d * G4 * H, G4, H, u0, nu, out);  // a last chunk of fewer units: fewer panels
  }
};

// A chunk's dh after step t (N rows of `cols`, its first nu columns computed, row i for batch row
// order.row(i)): dz_{t+1}·W_hh for the rows that step t + 1 runs (zero for the others: their dz
// is zero), plus what frozen steps pass through (`pass`, (N, H) of direction d). dz_next is
// dz_{t+1}, or null at t = T - 1.
template <typename E>
void chunk_dh(const Order& order, int64_t na_next, const E* dz_next, int64_t G4, const E* packed,
              const float* pass, int64_t N, int64_t H, int64_t u0, int64_t nu, float* dh) {
  constexpr int64_t cols = BackwardWeights<E>::cols;
  if (na_next > 0) {
    const Product<E> prod{dz_next, G4, static_cast<int>(G4), packed, order.rows()};
    gemm_packed(na_next, nu, &prod, 1, dh, cols);
  }
  for (int64_t i = na_next; i < N; ++i) std::fill(dh + i * cols, dh + i * cols + nu, 0.0f);
  for (int64_t i = 0; i < N; ++i) {
    const float* ps = pass + order.row(i) * H + u0;
    for (int64_t j = 0; j < nu; ++j) dh[i * cols + j] += ps[j];
  }
}

template <typename E>
void backward(const Dims& s, ffi::ThreadPool& pool, int threads, int64_t small_batch,
              const std::vector<Span>& fresh, const E* dhs, const float* dcs, bool dcs_all,
              const float* acts, const float* cs, const float* c0, const E* w_hh,
              const int8_t* mask, E* dz, float* db, float* dh0, float* dc0) {
  const int64_t T = s.T, D = s.D, N = s.N, H = s.H, G4 = 4 * H;
  const BackwardWeights<E> w(s, w_hh, threads);
  const int64_t chunks = w.chunks, cols = w.cols;
  // dz over the saved gates: the rows of ended sequences hold the zeros the forward wrote.
  const bool in_place = static_cast<const void*>(dz) == static_cast<const void*>(acts);
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
    const int64_t u0 = w.first(k), nu = w.units_of(k);
    if (t == T - 1 && !claim()) return false;
    if (t == T - 1) w.pack(d, k);
    float* dh = scratch.get(static_cast<size_t>(N * cols));  // dh after step t, this chunk
    // Row i of the chunk at step t ≥ 0 (batch row order.row(i)).
    const auto row_at = [&](int64_t i) {
      const int64_t n = order.row(i), r = (t * D + d) * N + n;
      return BackwardRow<E>{
          .dh = dh + i * cols,
          .dhs = dhs + r * H + u0,
          .dcs = dcs_all ? dcs + r * H + u0 : nullptr,
          .acts = acts + r * G4 + u0,
          .c = cs + r * H + u0,
          .c_prev = t == 0 ? c0 + (d * N + n) * H + u0 : cs + (r - D * N) * H + u0,
          .dc = dc.data() + (d * N + n) * H + u0,
          .pass = pass.data() + (d * N + n) * H + u0,
          .dz = dz + r * G4 + u0,
          .db = db + d * G4 + u0,
      };
    };
    if (t >= 0)
      for (int64_t i = 0; i < N; ++i) row_at(i).prefetch_inputs(H, nu, i < order.active[t]);
    const bool last = t == T - 1;
    const E* dz_next = last ? nullptr : dz + ((t + 1) * D + d) * N * G4;
    chunk_dh(order, last ? 0 : order.active[t + 1], dz_next, G4, w.packed(d, k),
             pass.data() + d * N * H, N, H, u0, nu, dh);
    if (!last && !claim()) return false;
    if (t < 0) {  // the dh0 row: the gradients w.r.t. h_0 and c_0
      for (int64_t i = 0; i < N; ++i) {
        const int64_t at = (d * N + order.row(i)) * H + u0;
        std::memcpy(dh0 + at, dh + i * cols, nu * sizeof(float));
        std::memcpy(dc0 + at, dc.data() + at, nu * sizeof(float));
      }
      return true;
    }
    const int64_t na = order.active[t];
    for (int64_t i = 0; i < N; ++i)
      cell_backward(row_at(i), H, nu, i < na && order.valid(mask, t, N, order.row(i)),
                    !in_place || i < na);
    return true;
  }, runs_for_batch(N, threads, small_batch));
}

}  // namespace
