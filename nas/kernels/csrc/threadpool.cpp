// A small persistent thread pool with dynamic chunk scheduling.
//
// The caller thread takes part and keeps taking chunks until none is left, so a job never waits for a
// worker that the OS has not scheduled yet (important on loaded machines); it only waits for chunks that
// a worker has already started. When that wait was long (a worker preempted mid-chunk because the other
// cores are busy), or no worker joined several jobs in a row, the next jobs run on the calling thread alone
// for a while (backoff). Outputs never depend
// on which thread runs which chunk.
#include <chrono>

#include "common.h"

namespace nask {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

struct Job {
  void (*fn)(void*, int, int) = nullptr;
  void* ctx = nullptr;
  int tasks = 0, chunk = 1;
  std::atomic<int> next{0};
};

class ThreadPool {
 public:
  void run(int nt, void (*fn)(void*, int, int), void* ctx, int tasks) {
    std::lock_guard<std::mutex> guard(run_mu_);
    while (static_cast<int>(threads_.size()) < nt - 1) {
      const uint64_t seen = gen_.load();
      threads_.emplace_back([this, seen] { worker(seen); });
    }
    wanted_.store(nt - 1);
    job_.fn = fn;
    job_.ctx = ctx;
    job_.tasks = tasks;
    job_.chunk = std::max(1, tasks / (nt * 4));
    job_.next.store(0);
    worker_chunks_.store(0);
    closed_.store(false);
    {
      std::lock_guard<std::mutex> l(mu_);
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    const auto start = std::chrono::steady_clock::now();
    const auto longest_chunk = drain(false);
    closed_.store(true);
    if (inside_.load() == 0) {
      // No worker took part in a multi-chunk job: the workers are probably not getting a core (a running worker
      // polls every few ns), and when they do get one, their spinning takes it from this thread. After a few
      // such jobs in a row (3 longer than 20 us, or 8 shorter ones), back off: workers go to sleep.
      const int chunks = (tasks + job_.chunk - 1) / job_.chunk;
      const bool long_job = std::chrono::steady_clock::now() - start > std::chrono::microseconds(kJoinUs);
      if (chunks >= 2 && worker_chunks_.load() == 0) {
        strikes_ += long_job ? 3 : 1;
        if (strikes_ >= kStrikes) {
          strikes_ = 0;
          backoff_.store(kBackoffJobs);
        }
      } else if (worker_chunks_.load() > 0) {
        strikes_ = 0;
      }
      return;
    }
    // A worker still runs a chunk. If the OS preempted it (the other cores are busy), waiting can take a whole
    // time slice; after a long wait the next kBackoffJobs jobs run on the calling thread alone (same outputs).
    const auto t0 = std::chrono::steady_clock::now();
    int spins = 0;
    while (inside_.load() != 0) {
      if (++spins < 20000) cpu_relax();
      else std::this_thread::yield();
    }
    // A running worker finishes its chunk within about one chunk's time (chunks are equal work), so only a wait
    // well past the longest chunk this thread ran is a preempted worker (a lost time slice: milliseconds). A fixed
    // 50 us threshold fired on layers whose chunks take longer (MobileNetV2's 112x112 layers, a fused block's
    // strips) and kept two threads at one thread's speed for the next 200 ops.
    if (std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(kLongWaitUs) + 4 * longest_chunk)
      backoff_.store(kBackoffJobs);
  }

  // True if this job should run single-threaded (after a long wait for a preempted worker).
  bool backing_off() {
    if (backoff_.load(std::memory_order_relaxed) <= 0) return false;
    backoff_.fetch_sub(1, std::memory_order_relaxed);
    return true;
  }

 private:
  // Runs chunks until none is left; the calling thread (worker false) returns the longest chunk it ran.
  std::chrono::steady_clock::duration drain(bool worker) {
    std::chrono::steady_clock::duration longest{0};
    for (;;) {
      const int b = job_.next.fetch_add(job_.chunk);
      if (b >= job_.tasks) return longest;
      if (worker) {
        worker_chunks_.fetch_add(1);
        job_.fn(job_.ctx, b, std::min(job_.tasks, b + job_.chunk));
      } else {
        const auto t = std::chrono::steady_clock::now();
        job_.fn(job_.ctx, b, std::min(job_.tasks, b + job_.chunk));
        longest = std::max(longest, std::chrono::steady_clock::now() - t);
      }
    }
  }

  void worker(uint64_t seen) {
    for (;;) {
      int spins = 0;
      while (gen_.load(std::memory_order_acquire) == seen && spins < kWorkerSpins) {
        cpu_relax();
        ++spins;
      }
      if (gen_.load() == seen) {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return gen_.load() != seen; });
      }
      seen = gen_.load();
      if (wanted_.fetch_sub(1) <= 0) continue;  // more workers than this job asked for
      inside_.fetch_add(1);
      if (!closed_.load()) drain(true);
      inside_.fetch_sub(1);
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_;
  Job job_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> inside_{0}, wanted_{0}, backoff_{0}, worker_chunks_{0};
  int strikes_ = 0;  // multi-chunk jobs in a row that no worker joined, weighted (guarded by run_mu_)
  // worker spin before sleeping (~60 us), long wait (beyond 4 chunks' time), job time a running worker surely
  // joins, jobs without workers before backing off, backoff length (jobs)
  static constexpr int kWorkerSpins = 4000, kLongWaitUs = 200, kJoinUs = 20, kStrikes = 8, kBackoffJobs = 200;
  std::atomic<bool> closed_{true};
};

ThreadPool& pool() {
  static ThreadPool* p = new ThreadPool();  // never destroyed: workers may outlive static destruction
  return *p;
}

}  // namespace

void parallel_for_raw(int threads, int tasks, void (*fn)(void*, int, int), void* ctx) {
  if (tasks <= 0) return;
  const int nt = std::max(1, std::min(threads, tasks));
  if (nt == 1 || pool().backing_off()) {
    fn(ctx, 0, tasks);
    return;
  }
  pool().run(nt, fn, ctx, tasks);
}

void parallel_for_fresh(int threads, int tasks, void (*fn)(void*, int, int), void* ctx) {
  if (tasks <= 0) return;
  const int nt = std::max(1, std::min(threads, tasks));
  std::atomic<int> next{0};
  auto work = [&] {
    for (int t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) fn(ctx, t, t + 1);
  };
  std::vector<std::thread> helpers;
  for (int i = 1; i < nt; ++i) helpers.emplace_back(work);
  work();
  for (auto& h : helpers) h.join();
}

}  // namespace nask
