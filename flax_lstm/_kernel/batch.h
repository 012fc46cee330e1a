// The sizes of a call (Dims), and the order of a ragged batch's rows, longest first (Order).
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "config.h"

namespace {

// A call's sizes: T steps, D directions, N sequences, I inputs, H hidden units.
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

}  // namespace
