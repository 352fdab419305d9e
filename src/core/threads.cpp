#include "core/threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace dsv3 {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Decode runs hundreds of small parallel ops per token; waking a sleeping thread through a
// futex costs tens of microseconds each time. So workers and the caller spin on an atomic for
// a short while before they sleep on a condition variable.
class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int n) {
    stop();
    stopping_ = false;
    // New workers start at the current generation, or they would run the last (finished) job.
    const uint64_t now = generation_.load();
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, now] { loop(i, now); });
  }

  void run(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain) {
    const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
    const int chunks = int(std::min<int64_t>(size(), max_chunks));
    if (chunks <= 1 || in_parallel_) {  // nested calls run serially on the calling thread
      if (n > 0) fn(0, n, 0);
      return;
    }
    std::lock_guard one_at_a_time(run_mu_);  // callers on several threads take turns
    {
      std::lock_guard lk(mu_);
      fn_ = &fn;
      n_ = n;
      chunks_ = chunks;
      error_ = nullptr;
      pending_.store(chunks - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    in_parallel_ = true;
    run_chunk(&fn, n, chunks, 0);
    in_parallel_ = false;
    for (int spin = 0; spin < kSpins && pending_.load(std::memory_order_acquire) != 0; ++spin)
      cpu_relax();
    if (pending_.load(std::memory_order_acquire) != 0) {
      std::unique_lock lk(mu_);
      done_cv_.wait(lk, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static constexpr int kSpins = 20000;  // ~100 µs of pause instructions
  using Fn = std::function<void(int64_t, int64_t, int)>;

  void run_chunk(const Fn* fn, int64_t n, int chunks, int c) {
    try {
      const int64_t begin = n * c / chunks, end = n * (c + 1) / chunks;
      if (begin < end) (*fn)(begin, end, c);
    } catch (...) {
      std::lock_guard g(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void loop(int index, uint64_t seen) {
    for (;;) {
      uint64_t g = generation_.load(std::memory_order_acquire);
      for (int spin = 0; spin < kSpins && g == seen && !stopping_.load(); ++spin) {
        cpu_relax();
        g = generation_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stopping_.load() || generation_.load() != seen; });
      }
      if (stopping_.load()) return;
      // The job's generation and parameters are read together under the lock: a worker that
      // was descheduled may wake after the caller has moved on to a newer job, and must then
      // take part in that job (once), never mix one job's generation with another's sizes.
      const Fn* fn;
      int64_t n;
      int chunks;
      {
        std::lock_guard lk(mu_);
        seen = generation_.load(std::memory_order_acquire);
        fn = fn_;
        n = n_;
        chunks = chunks_;
      }
      if (index >= chunks) continue;
      in_parallel_ = true;
      run_chunk(fn, n, chunks, index);
      in_parallel_ = false;
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        { std::lock_guard lk(mu_); }  // the caller is either spinning or inside wait()
        done_cv_.notify_one();
      }
    }
  }

  void stop() {
    {
      std::lock_guard g(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, done_cv_;
  const Fn* fn_ = nullptr;
  int64_t n_ = 0;
  int chunks_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stopping_{false};
  std::exception_ptr error_;
  static thread_local bool in_parallel_;
};

thread_local bool Pool::in_parallel_ = false;

int default_threads() {
  if (const char* e = std::getenv("DSV3_THREADS")) {
    const int n = std::atoi(e);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

int num_threads() {
  return pool().size();
}
void set_num_threads(int n) {
  pool().resize(std::max(1, n));
}

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain) {
  pool().run(n, fn, grain);
}

}  // namespace dsv3
