// A small persistent thread pool; workers spin briefly, then sleep on a condition variable.
#include "common.h"

namespace nask {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class ThreadPool {
 public:
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void run(int nt, const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> guard(run_mu_);
    while (static_cast<int>(threads_.size()) < nt - 1) {
      const int id = static_cast<int>(threads_.size());
      const uint64_t seen = gen_.load();
      threads_.emplace_back([this, id, seen] { worker(id, seen); });
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      fn_ = &fn;
      active_ = nt;
      pending_.store(static_cast<int>(threads_.size()));
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    fn(0);
    int spins = 0;
    while (pending_.load(std::memory_order_acquire) != 0) {
      if (++spins < 100000) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  void worker(int id, uint64_t seen) {
    for (;;) {
      int spins = 0;
      while (gen_.load(std::memory_order_acquire) == seen && spins < 200000) {
        cpu_relax();
        ++spins;
      }
      if (gen_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return gen_.load() != seen; });
      }
      const std::function<void(int)>* fn;
      int active;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (stop_) return;
        seen = gen_.load();
        fn = fn_;
        active = active_;
      }
      if (id + 1 < active) (*fn)(id + 1);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_;
  const std::function<void(int)>* fn_ = nullptr;
  int active_ = 0;
  bool stop_ = false;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> pending_{0};
};

ThreadPool& pool() {
  static ThreadPool* p = new ThreadPool();  // leaked on purpose: no join at interpreter exit
  return *p;
}

}  // namespace

void parallel_for_raw(int threads, int tasks, void (*fn)(void*, int, int), void* ctx) {
  if (tasks <= 0) return;
  const int nt = std::max(1, std::min(threads, tasks));
  if (nt == 1) {
    fn(ctx, 0, tasks);
    return;
  }
  pool().run(nt, [&](int t) {
    const int b = static_cast<int>(static_cast<int64_t>(tasks) * t / nt);
    const int e = static_cast<int>(static_cast<int64_t>(tasks) * (t + 1) / nt);
    if (b < e) fn(ctx, b, e);
  });
}

}  // namespace nask
