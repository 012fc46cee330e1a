// The recurrence of one LSTM layer on CPU, forward and backward, as XLA FFI custom calls.
//
// flax_lstm compiles this file on first use (see flax_lstm/kernel.py) with the XLA FFI headers
// of the installed jaxlib and -march=native. It covers what XLA:CPU runs slowly: the T
// sequential steps of a small GEMM (h_{t-1}·W_hhᵀ forward, dz_t·W_hh backward) each followed
// by the gate arithmetic. XLA pays a thread wake-up per GEMM, runs the gate arithmetic on one
// thread and allocates per-step temporaries; here the threads stay up for the whole sequence,
// each owns a slice of the hidden units (its W_hh columns packed once into its cache), fuses
// the gate arithmetic into its GEMM output, and the threads meet once per step at a barrier.
//
// Everything that is one large GEMM (the input projection, the weight and input gradients)
// stays in XLA. Only float32, no projection (proj_size=0) and no recurrent dropout: the
// Python side falls back to the lax.scan path for anything else.
//
// Layouts (row-major), D directions run one after the other:
//   gx    (T, D, N, 4H)  x_t·W_ihᵀ + b_ih + b_hh, gate order i, f, g, o
//   w_hh  (D, 4H, H)     as torch stores it
//   h0/c0 (D, N, H)
//   mask  (T, N) int8   nonzero where step t of sequence n is valid, or empty: all valid.
//                        A masked step keeps the state (and passes gradients through).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <cstdint>
#include <cstring>
#include <sys/mman.h>
#include <string>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

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

// One product A · B of a GEMM: A is M × K with leading dimension lda, Bp holds the packed
// panels of B (K × NR each, one after the other). A sum of two products shares the output.
struct Product {
  const float* A;
  int64_t lda;
  int K;
  const float* Bp;
};

template <int M>
inline void accumulate(vec (&acc0)[M], vec (&acc1)[M], const float* __restrict A, int64_t lda,
                       int K, const float* __restrict B) {
  for (int k = 0; k < K; ++k) {
    const vec b0 = *reinterpret_cast<const vec_u*>(B + k * NR);
    const vec b1 = *reinterpret_cast<const vec_u*>(B + k * NR + VW);
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      const float a = A[i * lda + k];
      acc0[i] += a * b0;
      acc1[i] += a * b1;
    }
  }
}

// C[i0 : i0 + M, panel p] = Σ over the products of A[i0 : i0 + M, :] · B[:, panel p].
template <int M>
inline void micro(const Product* prods, int nprod, int64_t i0, int64_t p, float* __restrict C,
                  int64_t ldc) {
  vec acc0[M], acc1[M];
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    acc0[i] = vec{};
    acc1[i] = vec{};
  }
  for (int q = 0; q < nprod; ++q) {
    const Product& pr = prods[q];
    accumulate<M>(acc0, acc1, pr.A + i0 * pr.lda, pr.lda, pr.K, pr.Bp + p * pr.K * NR);
  }
  float* c = C + i0 * ldc + p * NR;
#pragma GCC unroll 8
  for (int i = 0; i < M; ++i) {
    *reinterpret_cast<vec_u*>(c + i * ldc) = acc0[i];
    *reinterpret_cast<vec_u*>(c + i * ldc + VW) = acc1[i];
  }
}

template <int M>
inline void micro_rows(int rows, const Product* prods, int nprod, int64_t i0, int64_t p, float* C,
                       int64_t ldc) {
  if constexpr (M > 0) {
    if (rows == M) return micro<M>(prods, nprod, i0, p, C, ldc);
    return micro_rows<M - 1>(rows, prods, nprod, i0, p, C, ldc);
  }
}

// C (M × npanels·NR, leading dimension ldc) = the sum of the products, panel by panel (a
// panel of B stays in L1 across the row blocks).
void gemm_packed(int64_t M, int64_t npanels, const Product* prods, int nprod, float* C,
                 int64_t ldc) {
  for (int64_t p = 0; p < npanels; ++p) {
    int64_t i = 0;
    for (; i + MR <= M; i += MR) micro<MR>(prods, nprod, i, p, C, ldc);
    if (i < M) micro_rows<MR - 1>(static_cast<int>(M - i), prods, nprod, i, p, C, ldc);
  }
}

// Packs columns of Bᵀ for gemm_packed: column `col` of the packed B (K × cols, zero-padded
// to whole panels) is row src(col) of a row-major matrix with K columns. Written panel by
// panel in order, reading NR rows side by side.
template <typename Src>
void pack_rows(const float* w, int64_t K, int64_t cols, Src src, std::vector<float>& out) {
  const int64_t padded = round_up(cols, NR);
  out.resize(static_cast<size_t>(K * padded));
  for (int64_t c0 = 0; c0 < padded; c0 += NR) {
    const float* rows[NR];
    for (int j = 0; j < NR; ++j) rows[j] = c0 + j < cols ? w + src(c0 + j) * K : nullptr;
    float* panel = out.data() + c0 * K;
    for (int64_t k = 0; k < K; ++k)
      for (int j = 0; j < NR; ++j) panel[k * NR + j] = rows[j] != nullptr ? rows[j][k] : 0.0f;
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

// A barrier that spins (the threads meet once per time step, every few microseconds) and
// yields the core when a partner is late, so that an oversubscribed machine still progresses.
class SpinBarrier {
 public:
  void set_size(int n) { n_ = n; }
  void wait() {
    if (n_ == 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 4000) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  int n_ = 1;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
};

// A team of threads for one call, drawn from XLA's own thread pool: no thread is created per
// call, and the pool's workers, which spin for a while after XLA's own operations, do the work
// instead of competing with it for the cores. The calling thread schedules `want` tasks and
// sleeps if that many workers join within a short wait; otherwise it joins the team itself
// (it may itself be one of the pool's workers). XLA promises no parallelism for scheduled
// tasks, so the team closes after the wait with whoever joined, and a task that starts later
// leaves at once. The state is shared with the tasks, which may outlive the call.
class Team {
 public:
  static constexpr int kClosed = 1 << 30;
  std::atomic<int> state{0};  // members joined so far | kClosed
  std::atomic<bool> ready{false};
  std::atomic<int> finished{0};
  int size = 0;
  SpinBarrier barrier;

  int try_join() {  // a member index, or -1 once the team has closed
    int s = state.load(std::memory_order_acquire);
    while (!(s & kClosed)) {
      if (state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) return s;
    }
    return -1;
  }

  template <typename Fn>
  void work(int member, const Fn& fn) {
    while (!ready.load(std::memory_order_acquire)) cpu_relax();
    fn(member, size, barrier);
    finished.fetch_add(1, std::memory_order_acq_rel);
    finished.notify_all();
  }
};

// Runs fn(member, team_size, barrier) on up to `want` threads and returns when all are done.
template <typename Fn>
void run_team(ffi::ThreadPool& pool, int want, const Fn& fn) {
  if (want <= 1) {
    SpinBarrier alone;
    return fn(0, 1, alone);
  }
  auto team = std::make_shared<Team>();
  const std::thread::id caller = std::this_thread::get_id();
  for (int i = 0; i < want; ++i) {
    pool.Schedule([team, caller, &fn]() {
      if (std::this_thread::get_id() == caller) return;  // run inline: no parallelism there
      const int member = team->try_join();
      if (member >= 0) team->work(member, fn);
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
  while ((team->state.load(std::memory_order_acquire) & ~Team::kClosed) < want &&
         std::chrono::steady_clock::now() < deadline)
    cpu_relax();
  // Close the team; the caller joins it unless the pool already supplied `want` workers.
  int own = -1, s = team->state.load(std::memory_order_acquire);
  for (;;) {
    const bool join = s < want;
    if (team->state.compare_exchange_weak(s, (join ? s + 1 : s) | Team::kClosed,
                                          std::memory_order_acq_rel)) {
      own = join ? s : -1;
      team->size = join ? s + 1 : s;
      break;
    }
  }
  team->barrier.set_size(team->size);
  team->ready.store(true, std::memory_order_release);
  if (own >= 0) team->work(own, fn);
  for (int done = team->finished.load(std::memory_order_acquire); done < team->size;
       done = team->finished.load(std::memory_order_acquire))
    team->finished.wait(done, std::memory_order_acquire);
}

// Packs the columns [c0, c0 + cols) of a row-major K × ld matrix for gemm_packed.
void pack_cols(const float* w, int64_t K, int64_t ld, int64_t c0, int64_t cols,
               std::vector<float>& out) {
  const int64_t padded = round_up(cols, NR);
  out.assign(static_cast<size_t>(K * padded), 0.0f);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < cols; ++j) out[(j / NR) * K * NR + k * NR + j % NR] = w[k * ld + c0 + j];
}

// Faults in the pages of fresh output buffers with one system call per buffer and thread
// instead of one trap per 4 KiB page on first write (each trap costs microseconds, more under a
// hypervisor: the 16 MB of saved gates of B32 T128 H256 are 4096 of them). Each member of the
// team takes its share, so the zeroing of the pages runs in parallel too. Best effort: older
// kernels refuse, and then the writes fault the pages in as usual.
struct Span {
  void* data;
  size_t bytes;
};

void prefault_share(const std::vector<Span>& spans, int member, int team) {
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
  constexpr uintptr_t page = 4096;
  for (const Span& sp : spans) {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(sp.data), hi = lo + sp.bytes;
    const uintptr_t begin = (lo + page - 1) & ~(page - 1), end = hi & ~(page - 1);
    if (end <= begin + 16 * page) continue;  // small: not worth a system call
    const uintptr_t pages = (end - begin) / page;
    const uintptr_t from = begin + pages * member / team * page;
    const uintptr_t to = begin + pages * (member + 1) / team * page;
    if (to > from) madvise(reinterpret_cast<void*>(from), to - from, MADV_POPULATE_WRITE);
  }
#else
  (void)spans;
  (void)member;
  (void)team;
#endif
}

struct Slice {
  int64_t u0, nu;  // a thread's hidden units [u0, u0 + nu)
};

Slice unit_slice(int64_t H, int threads, int p) {
  const int64_t base = H / threads, extra = H % threads;
  return {p * base + std::min<int64_t>(p, extra), base + (p < extra ? 1 : 0)};
}

struct Dims {
  int64_t T, D, N, I, H;
};

// ---------------------------------------------------------------------------------------------
// Forward: h_t, c_t for every step, and the activated gates when `acts` is given. Each step's
// pre-activations x_t·W_ihᵀ + h_{t-1}·W_hhᵀ are one GEMM over both products, so no (T, N, 4H)
// input projection is ever stored. cs holds every step's cell state (T, D, N, H), or only the
// last one (D, N, H) when cs_all is false.

void forward(const Dims& s, ffi::ThreadPool& pool, int threads, const std::vector<Span>& fresh,
             const float* x,
             const float* w_ih, const float* bias, const float* w_hh, const float* h0,
             const float* c0, const int8_t* mask, float* hs, float* cs, bool cs_all,
             float* acts) {
  const int64_t T = s.T, D = s.D, N = s.N, I = s.I, H = s.H, G4 = 4 * H;
  run_team(pool, threads, [&](int p, int team, SpinBarrier& barrier) {
    prefault_share(fresh, p, team);
    const Slice sl = unit_slice(H, team, p);
    const int64_t u0 = sl.u0, nu = sl.nu;
    const int64_t cols = round_up(4 * nu, NR), npan = cols / NR;
    std::vector<float> bi, bh, gate(static_cast<size_t>(N * cols)), b(4 * nu);
    std::vector<float> c(static_cast<size_t>(N * nu));
    // This thread's gate columns: column g·nu + j is gate g of unit u0 + j (a row of W).
    const auto row_of = [&](int64_t col) { return (col / nu) * H + u0 + col % nu; };
    for (int64_t d = 0; d < D; ++d) {
      pack_rows(w_ih + d * G4 * I, I, 4 * nu, row_of, bi);
      pack_rows(w_hh + d * G4 * H, H, 4 * nu, row_of, bh);
      for (int64_t col = 0; col < 4 * nu; ++col) b[col] = bias[d * G4 + row_of(col)];
      for (int64_t n = 0; n < N; ++n)
        std::memcpy(&c[n * nu], c0 + (d * N + n) * H + u0, nu * sizeof(float));
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row0 = (t * D + d) * N;  // first row of step t, direction d
        const float* hprev = t == 0 ? h0 + d * N * H : hs + (row0 - D * N) * H;
        const Product prods[2] = {{x + row0 * I, I, static_cast<int>(I), bi.data()},
                                  {hprev, H, static_cast<int>(H), bh.data()}};
        gemm_packed(N, npan, prods, 2, gate.data(), cols);
        for (int64_t n = 0; n < N; ++n) {
          const bool valid = mask == nullptr || mask[t * N + n] != 0;
          const float* z = gate.data() + n * cols;
          const float* hp = hprev + n * H + u0;
          float* h = hs + (row0 + n) * H + u0;
          float* cn = c.data() + n * nu;
          float* a = acts == nullptr ? nullptr : acts + (row0 + n) * G4 + u0;
          const float* bb = b.data();
          for_columns(nu, [&]<typename V>(int64_t j) {
            const V i_ = sigmoid_approx<V>(load<V>(z + j) + load<V>(bb + j));
            const V f_ = sigmoid_approx<V>(load<V>(z + nu + j) + load<V>(bb + nu + j));
            const V g_ = tanh_approx<V>(load<V>(z + 2 * nu + j) + load<V>(bb + 2 * nu + j));
            const V o_ = sigmoid_approx<V>(load<V>(z + 3 * nu + j) + load<V>(bb + 3 * nu + j));
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
        barrier.wait();  // h_t complete: every thread reads all of it in the next GEMM
      }
      if (!cs_all) {
        for (int64_t n = 0; n < N; ++n)
          std::memcpy(cs + (d * N + n) * H + u0, &c[n * nu], nu * sizeof(float));
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward: the gate pre-activation gradients dz (T, D, N, 4H) and dh0, dc0. dhs is the
// gradient of every step's h; dcs of every step's c (dcs_all) or of the last one only.

void backward(const Dims& s, ffi::ThreadPool& pool, int threads, const std::vector<Span>& fresh,
              const float* dhs,
              const float* dcs, bool dcs_all, const float* acts, const float* cs,
              const float* c0, const float* w_hh, const int8_t* mask, float* dz, float* dh0,
              float* dc0) {
  const int64_t T = s.T, D = s.D, N = s.N, H = s.H, G4 = 4 * H;
  run_team(pool, threads, [&](int p, int team, SpinBarrier& barrier) {
    prefault_share(fresh, p, team);
    const Slice sl = unit_slice(H, team, p);
    const int64_t u0 = sl.u0, nu = sl.nu;
    const int64_t cols = round_up(nu, NR), npan = cols / NR;
    std::vector<float> bp, gate(static_cast<size_t>(N * cols));
    std::vector<float> dh(static_cast<size_t>(N * nu)), dc(static_cast<size_t>(N * nu));
    std::vector<float> pass(static_cast<size_t>(N * nu));
    for (int64_t d = 0; d < D; ++d) {
      // This thread's columns of W_hh (4H × H): dh_{t-1}[:, u] = dz_t · W_hh[:, u].
      pack_cols(w_hh + d * G4 * H, G4, H, u0, nu, bp);
      std::fill(dh.begin(), dh.end(), 0.0f);
      for (int64_t n = 0; n < N; ++n) {
        if (dcs_all) {
          std::fill(dc.begin() + n * nu, dc.begin() + (n + 1) * nu, 0.0f);
        } else {
          std::memcpy(&dc[n * nu], dcs + (d * N + n) * H + u0, nu * sizeof(float));
        }
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t row0 = (t * D + d) * N;
        for (int64_t n = 0; n < N; ++n) {
          const bool valid = mask == nullptr || mask[t * N + n] != 0;
          const float* a = acts + (row0 + n) * G4 + u0;
          const float* ct = cs + (row0 + n) * H + u0;
          const float* cp = t == 0 ? c0 + (d * N + n) * H + u0 : cs + (row0 - D * N + n) * H + u0;
          const float* gh = dhs + (row0 + n) * H + u0;
          const float* gc = dcs_all ? dcs + (row0 + n) * H + u0 : nullptr;
          float* dzr = dz + (row0 + n) * G4 + u0;
          float* dhn = dh.data() + n * nu;
          float* dcn = dc.data() + n * nu;
          float* ps = pass.data() + n * nu;
          for_columns(nu, [&]<typename V>(int64_t j) {
            const V dh_in = load<V>(dhn + j) + load<V>(gh + j);
            const V dc_in = gc == nullptr ? load<V>(dcn + j) : load<V>(dcn + j) + load<V>(gc + j);
            if (valid) {
              const V i_ = load<V>(a + j), f_ = load<V>(a + H + j);
              const V g_ = load<V>(a + 2 * H + j), o_ = load<V>(a + 3 * H + j);
              const V tc = tanh_approx<V>(load<V>(ct + j));
              const V dct = dc_in + dh_in * o_ * (1.0f - tc * tc);
              store<V>(dzr + j, dct * g_ * i_ * (1.0f - i_));
              store<V>(dzr + H + j, dct * load<V>(cp + j) * f_ * (1.0f - f_));
              store<V>(dzr + 2 * H + j, dct * i_ * (1.0f - g_ * g_));
              store<V>(dzr + 3 * H + j, dh_in * tc * o_ * (1.0f - o_));
              store<V>(dcn + j, dct * f_);
              store<V>(ps + j, V{});
            } else {  // a frozen step: no gate gradient, dh and dc pass through unchanged
              store<V>(dzr + j, V{});
              store<V>(dzr + H + j, V{});
              store<V>(dzr + 2 * H + j, V{});
              store<V>(dzr + 3 * H + j, V{});
              store<V>(dcn + j, dc_in);
              store<V>(ps + j, dh_in);
            }
          });
        }
        barrier.wait();  // dz_t complete: every thread reads all of it in the GEMM below
        const Product prod{dz + row0 * G4, G4, static_cast<int>(G4), bp.data()};
        gemm_packed(N, npan, &prod, 1, gate.data(), cols);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t j = 0; j < nu; ++j) dh[n * nu + j] = gate[n * cols + j] + pass[n * nu + j];
      }
      for (int64_t n = 0; n < N; ++n) {
        std::memcpy(dh0 + (d * N + n) * H + u0, &dh[n * nu], nu * sizeof(float));
        std::memcpy(dc0 + (d * N + n) * H + u0, &dc[n * nu], nu * sizeof(float));
      }
      // Each thread's state is its own and the next direction reads nothing of this one's
      // dz, so the directions need no barrier between them.
    }
  });
}

ffi::Error invalid(const char* what) {
  return ffi::Error::InvalidArgument(std::string("flax_lstm CPU kernel: ") + what);
}

int64_t count(const ffi::Buffer<ffi::F32>& b) { return static_cast<int64_t>(b.element_count()); }
int64_t count(ffi::Result<ffi::Buffer<ffi::F32>>& b) {
  return static_cast<int64_t>(b->element_count());
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, int64_t threads, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> w_ih, ffi::Buffer<ffi::F32> bias,
                       ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> h0,
                       ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::S8> mask,
                       ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> cs,
                       ffi::ResultBuffer<ffi::F32> acts) {
  const auto xd = x.dimensions(), hd = h0.dimensions();
  if (xd.size() != 4 || hd.size() != 3) return invalid("x must be (T, D, N, I), h0 (D, N, H)");
  const Dims s{xd[0], xd[1], xd[2], xd[3], hd[2]};
  const int64_t state = s.D * s.N * s.H, steps = s.T * state;
  if (s.D < 1 || s.N < 1 || s.H < 1 || hd[0] != s.D || hd[1] != s.N || count(c0) != state ||
      count(w_ih) != s.D * 4 * s.H * s.I || count(w_hh) != s.D * 4 * s.H * s.H ||
      count(bias) != s.D * 4 * s.H || count(hs) != steps ||
      (count(cs) != steps && count(cs) != state) ||
      (count(acts) != 4 * steps && count(acts) != 0) ||
      (mask.element_count() != 0 && static_cast<int64_t>(mask.element_count()) != s.T * s.N))
    return invalid("operand shapes do not agree");
  if (s.T == 0) return ffi::Error::Success();
  const bool cs_all = count(cs) == steps || s.T == 1;
  const std::vector<Span> fresh = {{hs->untyped_data(), count(hs) * sizeof(float)},
                                    {cs->untyped_data(), count(cs) * sizeof(float)},
                                    {acts->untyped_data(), count(acts) * sizeof(float)}};
  forward(s, pool, static_cast<int>(threads), fresh, x.typed_data(), w_ih.typed_data(),
          bias.typed_data(), w_hh.typed_data(), h0.typed_data(), c0.typed_data(),
          mask.element_count() ? mask.typed_data() : nullptr, hs->typed_data(), cs->typed_data(),
          cs_all, count(acts) ? acts->typed_data() : nullptr);
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, int64_t threads, ffi::Buffer<ffi::F32> dhs,
                        ffi::Buffer<ffi::F32> dcs, ffi::Buffer<ffi::F32> acts,
                        ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> c0,
                        ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::S8> mask,
                        ffi::ResultBuffer<ffi::F32> dz, ffi::ResultBuffer<ffi::F32> dh0,
                        ffi::ResultBuffer<ffi::F32> dc0) {
  const auto ad = acts.dimensions();
  if (ad.size() != 4 || ad[3] % 4 != 0) return invalid("acts must be (T, D, N, 4H)");
  const Dims s{ad[0], ad[1], ad[2], 0, ad[3] / 4};
  const int64_t state = s.D * s.N * s.H, steps = s.T * state;
  if (s.D < 1 || s.N < 1 || s.H < 1 || count(dhs) != steps || count(cs) != steps ||
      count(c0) != state || count(w_hh) != s.D * 4 * s.H * s.H ||
      (count(dcs) != steps && count(dcs) != state) || count(dz) != 4 * steps ||
      count(dh0) != state || count(dc0) != state ||
      (mask.element_count() != 0 && static_cast<int64_t>(mask.element_count()) != s.T * s.N))
    return invalid("operand shapes do not agree");
  if (s.T == 0) return ffi::Error::Success();
  const bool dcs_all = count(dcs) == steps && s.T > 1;
  // dz may take the saved gates' buffer (the Python side aliases them): then it is in place.
  std::vector<Span> fresh;
  if (dz->untyped_data() != acts.untyped_data())
    fresh.push_back({dz->untyped_data(), count(dz) * sizeof(float)});
  backward(s, pool, static_cast<int>(threads), fresh, dhs.typed_data(), dcs.typed_data(), dcs_all,
           acts.typed_data(), cs.typed_data(), c0.typed_data(), w_hh.typed_data(),
           mask.element_count() ? mask.typed_data() : nullptr, dz->typed_data(),
           dh0->typed_data(), dc0->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLstmForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Attr<int64_t>("threads")
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::S8>>()   // mask
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // acts
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLstmBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Attr<int64_t>("threads")
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dcs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // acts
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::S8>>()   // mask
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dc0
);
