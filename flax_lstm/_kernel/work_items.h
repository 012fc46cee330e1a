// A call's work as items claimed by the team, each thread its own run of a row first (run_items),
// the fixed runs of small batches (run_groups), and what an item's body is given (Scratch, Claim).
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "batch.h"
#include "buffers.h"
#include "team.h"

namespace {

// The `groups` argument of run_items for a batch of N: one run per thread for small batches.
inline int runs_for_batch(int64_t N, int threads, int64_t small_batch) {
  return N <= small_batch ? threads : 1;
}

// The most work that one run of a row holds where run_items shares `items` items among
// `threads` threads (run g: the items [g·items / runs, (g + 1)·items / runs)), item i holding
// size(i).
template <typename Size>
int64_t busiest_run(int64_t items, int threads, Size size) {
  const int64_t runs = std::min<int64_t>(threads, items);
  int64_t most = 0;
  for (int64_t g = 0; g < runs; ++g) {
    int64_t held = 0;
    for (int64_t i = g * items / runs; i < (g + 1) * items / runs; ++i) held += size(i);
    most = std::max(most, held);
  }
  return most;
}

// The units of the chunks of a step's items, for a layer of s.H units, s.D directions and s.N
// sequences on `threads` threads: `whole`, or half as many where that leaves the busiest thread
// at most 5/6 of its units a step and the step's GEMM has at least a row block of MR rows: a half
// chunk's GEMM has half the sums a k-step, which cover the multiply-adds' latency only with a
// whole row block, and a half chunk costs more a unit than a whole one (twice the items, its rows
// in more cache lines when H is not a multiple of 16), so a small gain in balance does not pay
// for it. At H96 on two threads, three backward chunks of 32 leave one thread 64 units a step and
// the other 32; six of 16 give each 48 (docs/performance/design.md, "The last chunk's columns:
// half panels"). Where they cut the busiest thread's units by a few per cent, as at H617 on two
// threads, the halves cost the backward more than the balance saved (measured: "Half chunks
// only where they share a step much more evenly").
inline int64_t chunk_units(const Dims& s, int threads, int64_t whole) {
  if (s.N < MR) return whole;
  const auto busiest = [&](int64_t units) {  // the most units a step that one run holds
    const int64_t chunks = (s.H + units - 1) / units;
    return busiest_run(s.D * chunks, threads,
                       [&](int64_t i) { return std::min(units, s.H - i % chunks * units); });
  };
  return 6 * busiest(whole / 2) <= 5 * busiest(whole) ? whole / 2 : whole;
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

// An atomic counter on a cache line of its own.
struct alignas(64) Counter {
  std::atomic<int64_t> value{0};
};

// Runs this thread's share of the prefault pieces, claimed from team.next, each counted as done.
inline void run_prefault(Team& team, const Prefault& prefault) {
  for (int64_t piece = team.next.fetch_add(1, std::memory_order_acq_rel); piece < prefault.size();
       piece = team.next.fetch_add(1, std::memory_order_acq_rel)) {
    prefault.run(piece);
    team.done.fetch_add(1, std::memory_order_acq_rel);
  }
}

// run_items with the chunks of each row in `groups` runs, a run claimed whole (see run_items).
// Run g of row r is ready once every item before row r is done: the prefault pieces and the
// groups runs of each earlier row, counted in `done`.
template <typename Body>
void run_groups(ffi::ThreadPool& pool, int threads, const Prefault& prefault, int64_t rows,
                int64_t chunks, const Body& body, int groups) {
  const int64_t first = prefault.size();
  // next[g]: the next row of run g that nobody has claimed.
  std::vector<Counter> next(static_cast<size_t>(groups));
  run_team(pool, threads, [&](Team& team, int slot) {
    Scratch scratch;
    run_prefault(team, prefault);
    const auto ready = [&](int64_t row) {
      return team.done.load(std::memory_order_acquire) >= first + row * groups;
    };
    // Claims row `row` of run g and runs it, if it is ready and still the run's next row.
    const auto take = [&](int g, int64_t row) {
      if (row >= rows || !ready(row) ||
          !next[g].value.compare_exchange_strong(row, row + 1, std::memory_order_acq_rel))
        return false;
      for (int64_t k = g * chunks / groups, end = (g + 1) * chunks / groups; k < end; ++k)
        run_body(body, row, k, scratch, Claim{});
      team.done.fetch_add(1, std::memory_order_acq_rel);
      return true;
    };
    const int home = slot % groups;
    for (int spins = 0;;) {
      if (take(home, next[home].value.load(std::memory_order_acquire))) {
        spins = 0;
        continue;
      }
      bool left = false, took = false;
      for (int g = 0; g < groups && !took; ++g) {
        const int64_t row = next[g].value.load(std::memory_order_acquire);
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

// Runs the prefault pieces, then `rows` rows of `chunks` items, claimed by a team of up to
// `threads` threads: body(row, chunk, scratch, claim) runs once every item of the rows before
// it has finished (and, for the first row, every prefault piece), and returns whether this
// thread finished the item (see Claim).
//
// Each row's chunks are cut into one run per thread, and a thread claims the items of its own
// run first, one at a time and in order, then any item of the row that is still unclaimed: so
// a thread keeps the same chunks step after step where the threads keep pace (its weight
// panels are read in one stream, and in a bidirectional layer its direction's state stays in
// its own core's cache), and the row is shared item by item where they do not (a thread that
// joins late or runs slowly).
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
  // Run g of a row: its chunks [begin(g), begin(g + 1)); next[g] counts its claimed items over
  // the rows, row after row (its row-r items are r·size(g) onwards).
  const int runs = static_cast<int>(std::min<int64_t>(threads, chunks));
  const auto begin = [&](int g) { return g * chunks / runs; };
  const auto size = [&](int g) { return begin(g + 1) - begin(g); };
  std::vector<Counter> next(static_cast<size_t>(runs));
  // Item j of run g in row `row` (counted with the prefault pieces).
  const auto item_at = [&](int64_t row, int g, int64_t j) {
    return first + row * chunks + begin(g) + j;
  };
  // The item of row `row` that run g hands out next, if it has one left: -1 if not.
  const auto claim_in = [&](int g, int64_t row) -> int64_t {
    const int64_t n = size(g);
    for (int64_t i = next[g].value.load(std::memory_order_acquire); i < (row + 1) * n;) {
      if (next[g].value.compare_exchange_weak(i, i + 1, std::memory_order_acq_rel))
        return item_at(row, g, i - row * n);
    }
    return -1;
  };
  run_team(pool, threads, [&](Team& team, int slot) {
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
      const int64_t row = (done - first) / chunks;
      for (int g = 0; g < runs; ++g) {
        const int64_t n = size(g);
        const int64_t held = std::clamp(next[g].value.load(std::memory_order_acquire) - row * n,
                                        int64_t{0}, n);
        for (int64_t j = 0; j < held; ++j) {
          const int64_t item = item_at(row, g, j);
          if (claimed[item - first].load(std::memory_order_acquire) == 0) return run(item, true);
        }
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
    run_prefault(team, prefault);
    // Row by row: this thread's own run first, then the others' unclaimed items, then the next
    // row (whose items wait for this one's).
    const int home = slot % runs;
    for (int64_t row = 0; row < rows;) {
      int64_t item = -1;
      for (int g = 0; g < runs && item < 0; ++g) item = claim_in((home + g) % runs, row);
      if (item < 0) {
        ++row;
        continue;
      }
      wait_for(first + row * chunks);  // the items before its row
      run(item, false);
      ++ran;
    }
  });
}

}  // namespace
