#include "thread_pool.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>

namespace nextlong {

namespace {

constexpr size_t kMaxWorkers = 256;

// One pool_run call. Each queued runner slot pulls task indices until none are left.
struct Job {
  const std::function<void(size_t)>* fn = nullptr;
  size_t n_tasks = 0;
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex mu;
  std::condition_variable done_cv;
  size_t runners_left = 0;

  void run() {
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) break;
      size_t t = next.fetch_add(1);
      if (t >= n_tasks) break;
      try {
        (*fn)(t);
      } catch (...) {
        if (!failed.exchange(true)) error = std::current_exception();
        break;
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    if (--runners_left == 0) done_cv.notify_all();
  }
};

thread_local bool t_is_pool_worker = false;

class Pool {
 public:
  // Makes sure at least `want` workers exist; returns how many do.
  size_t grow(size_t want) {
    want = std::min(want, kMaxWorkers);
    std::lock_guard<std::mutex> lock(mu_);
    while (n_threads_ < want) {
      try {
        std::thread(&Pool::work, this).detach();
      } catch (const std::system_error&) {
        break;  // out of threads: run with what we have
      }
      ++n_threads_;
    }
    return n_threads_;
  }

  void submit(Job* job, size_t runners) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < runners; ++i) queue_.push_back(job);
    }
    if (runners == 1) cv_.notify_one();
    else cv_.notify_all();
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return n_threads_;
  }

 private:
  void work() {
    t_is_pool_worker = true;
    for (;;) {
      Job* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
        job = queue_.front();
        queue_.pop_front();
      }
      job->run();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job*> queue_;
  size_t n_threads_ = 0;
};

// The pool belongs to the process that created it. A forked child has none of its threads, and its
// locks may have been held at the fork, so the child drops (leaks) it and lazily builds its own.
std::mutex g_pool_mu;
Pool* g_pool = nullptr;
pid_t g_pool_pid = 0;

void atfork_prepare() { g_pool_mu.lock(); }
void atfork_parent() { g_pool_mu.unlock(); }
void atfork_child() {
  g_pool = nullptr;
  g_pool_pid = 0;
  g_pool_mu.unlock();
}

Pool& pool() {
  static std::once_flag registered;
  std::call_once(registered, [] { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
  std::lock_guard<std::mutex> lock(g_pool_mu);
  const pid_t pid = getpid();
  if (g_pool == nullptr || g_pool_pid != pid) {
    g_pool = new Pool();  // never destroyed: workers live as long as the process
    g_pool_pid = pid;
  }
  return *g_pool;
}

}  // namespace

void pool_run(size_t n_tasks, int workers, const std::function<void(size_t)>& fn) {
  if (n_tasks == 0) return;
  size_t want = std::min(n_tasks, size_t(std::max(workers, 1)));
  if (t_is_pool_worker) {  // nested: waiting on the pool from inside it could starve it
    for (size_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  Pool& p = pool();
  size_t have = p.grow(want);
  if (have == 0) {
    for (size_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  want = std::min(want, have);
  Job job;
  job.fn = &fn;
  job.n_tasks = n_tasks;
  job.runners_left = want;
  p.submit(&job, want);
  {
    std::unique_lock<std::mutex> lock(job.mu);
    job.done_cv.wait(lock, [&] { return job.runners_left == 0; });
  }
  if (job.error) std::rethrow_exception(job.error);
}

size_t pool_size() {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  if (g_pool == nullptr || g_pool_pid != getpid()) return 0;
  return g_pool->size();
}

}  // namespace nextlong
