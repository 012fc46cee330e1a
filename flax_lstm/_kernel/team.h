// The team of threads that runs one call: the caller and workers of XLA's thread pool
// (run_team).
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "config.h"

namespace {

// Work sharing. A call's work is a list of items: first the pages of the fresh output buffers
// to fault in, claimed from one atomic counter by whichever threads are in the team, then rows
// of (direction, step, chunk of hidden units) in the order of the recurrence, claimed row by
// row (work_items.h: each thread its own run of a row's chunks first, then what is left of the
// row). An item of step t waits until every item of the step before is done (its GEMM reads
// the whole previous h, or dz), which the threads see through a second counter of finished
// items. A thread claims an item of a row only once no item of the rows before is left
// unclaimed, so the items it waits on are already held by running threads: no deadlock,
// whoever joins and whenever.
//
// The team is the calling thread plus workers of XLA's own thread pool (no thread is created
// per call). The caller starts at once; a worker joins whenever the pool runs its task, even
// halfway through the sequence, for instance once an XLA operation that ran beside the kernel
// has finished. XLA promises no parallelism for scheduled tasks, so nothing ever waits for a
// worker to come: a task that starts after the work is done leaves at once. The state is
// shared with the tasks (a shared_ptr), so a task that the pool runs after the call has
// returned still finds the team, closed.

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}


class Team {
 public:
  static constexpr int64_t kClosed = int64_t{1} << 40;
  std::atomic<int64_t> members{0};  // threads that joined | kClosed once the caller is done
  std::atomic<int64_t> left{0};     // threads that finished
  std::atomic<int64_t> next{0};     // next prefault piece to claim
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

}  // namespace
