// Runs independent tasks on the process-wide worker pool (thread_pool.h), so the tokenizer's
// thread-local piece caches stay warm from batch to batch. The first exception a task throws is rethrown.
#pragma once
#include <algorithm>
#include <thread>
#include <vector>

#include "thread_pool.h"

namespace nextlong {

inline int resolve_threads(int requested) {
  if (requested > 0) return requested;
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? int(hw) : 1;
}

template <class Fn>
void run_tasks(size_t n_tasks, int num_threads, Fn&& fn) {
  const int workers = int(std::min<size_t>(size_t(resolve_threads(num_threads)), n_tasks));
  pool_run(n_tasks, workers, [&](size_t t) { fn(t); });
}

// Splits items [0, n) with byte sizes given by `offsets` into contiguous ranges of roughly
// `target_bytes` each (at least one item per range), so threads get balanced work in order.
template <class Offset>
std::vector<std::pair<size_t, size_t>> split_by_bytes(const Offset* offsets, size_t n, size_t target_bytes) {
  std::vector<std::pair<size_t, size_t>> ranges;
  size_t begin = 0;
  while (begin < n) {
    size_t end = begin + 1;
    while (end < n && size_t(offsets[end] - offsets[begin]) < target_bytes) ++end;
    ranges.emplace_back(begin, end);
    begin = end;
  }
  return ranges;
}

}  // namespace nextlong
