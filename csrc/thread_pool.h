// A process-wide pool of long-lived worker threads for the tokenizer and the corpus engine.
// Why: the BPE tokenizer memoises pieces in thread-local caches; threads started per call begin
// with cold caches every batch, which costs ~1.5x in throughput. Pool workers keep theirs warm.
// The pool is created lazily, grows to the largest thread count asked for, runs several callers'
// jobs at once, and is replaced (never touched) in a forked child, so a fork cannot deadlock on it.
#pragma once
#include <cstddef>
#include <functional>

namespace nextlong {

// Runs fn(t) for every t in [0, n_tasks) on up to `workers` pool threads (tasks handed out one at a
// time) and returns when all are done; the first exception a task throws is rethrown here (the
// remaining tasks are skipped). The calling thread only waits, so all work lands on warm workers.
// Called from a pool worker itself (nested), the tasks run inline instead.
void pool_run(size_t n_tasks, int workers, const std::function<void(size_t)>& fn);

// Number of worker threads the pool has started so far in this process (0 before first use).
size_t pool_size();

}  // namespace nextlong
