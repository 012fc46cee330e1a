// The memory a call writes and reads: fresh output pages faulted in as work items
// (Prefault), prefetches, and buffers that are not zeroed (Unzeroed).
//
// Part of the CPU kernel, one translation unit: lstm_cpu.cc includes each of the kernel's
// headers once, in order; not a header for other code.

#pragma once

#include "config.h"

namespace {

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

// The blocks of memory that a call's buffers give back, kept for later calls (up to kMaxKept
// bytes, the smallest blocks let go first): a fresh block of megabytes is mapped by glibc and
// its every 4 KiB page faulted in and zeroed by the system on first write, a cost that a call
// of few steps does not amortise (a single step of a bidirectional layer at H512 packs 16 MiB
// of weights: "Scratch kept between calls, again" in docs/performance/design.md). A block is
// reused for a request of at least half its size; smaller requests are malloc's.
class BlockCache {
 public:
  static constexpr size_t kMinBytes = size_t{256} << 10, kMaxKept = size_t{256} << 20;
  // A block of at least `bytes` bytes, and its size.
  std::pair<void*, size_t> take(size_t bytes) {
    if (bytes >= kMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first / 2 <= bytes) {
        const std::pair<void*, size_t> block{it->second, it->first};
        kept_ -= it->first;
        free_.erase(it);
        return block;
      }
    }
    return {::operator new(bytes, kAlign), bytes};
  }
  // Gives a block back: kept, or freed where it is small or would not fit.
  void give(void* block, size_t bytes) {
    if (bytes >= kMinBytes && bytes <= kMaxKept) {
      std::lock_guard<std::mutex> lock(mutex_);
      while (kept_ + bytes > kMaxKept) {  // let the smallest go
        kept_ -= free_.begin()->first;
        ::operator delete(free_.begin()->second, kAlign);
        free_.erase(free_.begin());
      }
      free_.emplace(bytes, block);
      kept_ += bytes;
      return;
    }
    ::operator delete(block, kAlign);
  }

 private:
  static constexpr std::align_val_t kAlign{64};
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // by size
  size_t kept_ = 0;
};

// The process's cache, never destroyed (calls may run while the process exits).
inline BlockCache& block_cache() {
  static BlockCache* const cache = new BlockCache;
  return *cache;
}

// A buffer of n elements that is not zeroed, for the packed weights and the scratch of a call:
// every element they read is written first. A std::vector would zero them before the packing
// writes them, a pass over 8 MiB a call at H512 (docs/performance/design.md, "The kernel
// against its ceiling on Zen 3"). Its memory comes from, and goes back to, block_cache().
template <typename T>
class Unzeroed {
 public:
  explicit Unzeroed(size_t n) : block_(block_cache().take(n * sizeof(T))) {}
  ~Unzeroed() { block_cache().give(block_.first, block_.second); }
  Unzeroed(const Unzeroed&) = delete;
  Unzeroed& operator=(const Unzeroed&) = delete;
  T* data() const { return static_cast<T*>(block_.first); }
  T& operator[](size_t i) const { return data()[i]; }

 private:
  std::pair<void*, size_t> block_;
};

}  // namespace
