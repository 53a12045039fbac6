// Runs independent tasks on a few std::threads (no pool: batches are large, so starting threads
// costs microseconds against milliseconds of work). The first exception a task throws is rethrown.
#pragma once
#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace nextlong {

inline int resolve_threads(int requested) {
  if (requested > 0) return requested;
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? int(hw) : 1;
}

template <class Fn>
void run_tasks(size_t n_tasks, int num_threads, Fn&& fn) {
  const int workers = int(std::min<size_t>(size_t(resolve_threads(num_threads)), n_tasks));
  if (workers <= 1) {
    for (size_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto loop = [&] {
    for (;;) {
      size_t t = next.fetch_add(1);
      if (t >= n_tasks) return;
      try {
        fn(t);
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
        next.store(n_tasks);
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(size_t(workers - 1));
  for (int w = 1; w < workers; ++w) threads.emplace_back(loop);
  loop();
  for (auto& th : threads) th.join();
  if (failure) std::rethrow_exception(failure);
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
