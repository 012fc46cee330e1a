// The recurrence of one LSTM layer on CPU, forward and backward, as XLA FFI custom calls.
//
// flax_lstm compiles this file on first use (see flax_lstm/kernel.py) with the XLA FFI headers
// of the installed jaxlib and -march=native. It covers what XLA:CPU runs slowly: the T
// sequential steps of a small GEMM ([x_t, h_{t-1}]·[W_ih; W_hh]ᵀ forward, dz_t·W_hh backward),
// each followed by the gate arithmetic. XLA pays a thread wake-up per GEMM, runs the gate
// arithmetic on one thread and allocates per-step temporaries. Here the weights are packed once
// per call into panels for a register-blocked GEMM, each step is split into chunks of hidden
// units whose GEMM and gate arithmetic run back to back on one thread (the gate arithmetic
// reads the GEMM's output from cache), and a team of threads claims the chunks in order (team.h,
// work_items.h). Small batches (of at most `small_batch` sequences, an attribute of the call),
// where a step reads every weight for a few multiply-adds, compute the input projection for
// blocks of 64 steps at once, and each thread keeps to its own share of the chunks so that their
// weights stay in its core's cache.
//
// Ragged batches (seq_lengths) cost their real steps: the rows are taken in order of length,
// longest first, once per call, and each step's GEMM and gate arithmetic run on the rows whose
// sequence has not ended (the packed GEMM reads its rows through that order); a finished row
// only carries its state on, as a masked step did (Order, batch.h). In float32 the weight and input
// gradients are calls here too (weight_grads, input_grad), over the valid steps only; a padded
// batch takes them too unless its rows are few (the Python side's rule). What each of these
// saves is measured in docs/performance/design.md ("Ragged batches", "Tuning per CPU").
//
// The weight and input gradients of bfloat16, single large GEMMs, stay in XLA. float32, and
// bfloat16 where the CPU has AVX512_BF16 (the GEMM operands x,
// h, W and dz in bfloat16, products summed in float32 by vdpbf16ps, or on AMX tiles by
// tdpbf16ps where the CPU has AMX-BF16, see amx.h; gates, cell states and gradients in
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
//
// The kernel is one translation unit: this file, the FFI handlers (they check the operands'
// shapes and call the rest), and its headers, one concern each, included in dependency order:
//   config.h        the includes, the XLA FFI API, the bfloat16 and AMX feature macros
//   micro_kernel.h  the register-blocked GEMM micro-kernel and the packed panels' layout
//   amx.h           the bfloat16 GEMM on AMX tiles, and the run-time check for it
//   gemm.h          gemm_packed (micro-kernel or tiles), and packing weights into panels
//   gate_math.h     the loads, stores, tanh and sigmoid of the gate arithmetic
//   team.h          the threads of a call: the caller and workers of XLA's pool
//   buffers.h       fresh pages faulted in, prefetches, buffers that are not zeroed
//   batch.h         a call's sizes, and a ragged batch's rows in order of length
//   work_items.h    the work as items claimed by runs, small batches' runs, stealing
//   forward.h       the forward call
//   backward.h      the backward call
//   gradients.h     the float32 weight and input gradients, and a transposed copy
// flax_lstm/_kernel/build.py compiles this file; its cache key covers every file here.

#include "config.h"
#include "micro_kernel.h"
#include "amx.h"
#include "gemm.h"
#include "gate_math.h"
#include "team.h"
#include "buffers.h"
#include "batch.h"
#include "work_items.h"
#include "forward.h"
#include "backward.h"
#include "gradients.h"

namespace {

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
