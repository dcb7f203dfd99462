// The emulator's runtime (cuda_emu.h): a pool of OS threads that runs one block at a time, the
// block barrier with its watchdog, and the CUDA runtime calls the time loops make.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cuda_emu.h"

namespace bnlstm_emu {
namespace {

// The barrier sleeps on a futex: a timed wait (the watchdog) that std::barrier lacks, and one
// wake for the whole block. Sleeps while word == value, at most `seconds` (< 0: no limit).
void futex_wait(std::atomic<unsigned>& word, unsigned value, double seconds = -1) {
  timespec limit{static_cast<time_t>(seconds), static_cast<long>((seconds - long(seconds)) * 1e9)};
  syscall(SYS_futex, reinterpret_cast<unsigned*>(&word), FUTEX_WAIT_PRIVATE, value,
          seconds < 0 ? nullptr : &limit, nullptr, 0);
}

void futex_wake(std::atomic<unsigned>& word) {
  syscall(SYS_futex, reinterpret_cast<unsigned*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

double env_seconds(const char* name, double fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atof(v) : fallback;
}

std::string seconds(double s) {
  char text[32];
  std::snprintf(text, sizeof text, "%g s", s);
  return text;
}

// "step_common.cuh:52" of a __syncthreads site "<path>/step_common.cuh:52"
std::string where(const char* site) {
  const char* slash = std::strrchr(site, '/');
  return slash != nullptr ? slash + 1 : site;
}

// Thrown out of the kernel in every thread of a block whose barrier failed.
struct Aborted {};

// One block's barrier: arrivals of the current generation, the threads that have left the
// kernel, and the first failure.
struct Block {
  const char* kernel;
  unsigned index, threads;
  double watchdog_s;
  std::atomic<unsigned> arrived{0}, exited{0}, generation{0};
  std::atomic<const char*> site{nullptr};  // of the current generation's first arrival
  std::atomic<bool> failed{false};
  std::mutex failure_mutex;
  std::string failure;

  Block(const char* kernel, unsigned index, unsigned threads, double watchdog_s)
      : kernel(kernel), index(index), threads(threads), watchdog_s(watchdog_s) {}

  [[noreturn]] void fail(const std::string& what) {
    {
      const std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failed.load()) {
        failure = std::string(kernel) + ", block " + std::to_string(index) + ": " + what;
        failed.store(true);
      }
    }
    futex_wake(generation);
    throw Aborted{};
  }

  // The threads waiting at a barrier the rest of the block has left the kernel without
  // reaching, or 0. One snapshot: a thread that arrived cannot exit, so a + e == threads holds
  // only when neither count can change any more.
  unsigned stranded() const {
    const unsigned e = exited.load(), a = arrived.load();
    return e > 0 && a + e == threads ? a : 0;
  }

  std::string reached(const char* here, unsigned waiting) const {
    return "__syncthreads at " + where(here) + " reached by " + std::to_string(waiting) +
           " of " + std::to_string(threads) + " threads";
  }

  void sync(const char* here) {
    if (failed.load()) throw Aborted{};
    const char* first = nullptr;
    if (!site.compare_exchange_strong(first, here) && first != here &&
        std::strcmp(first, here) != 0) {
      fail("divergent __syncthreads: a thread at " + where(here) + " while others wait at " +
           where(first));
    }
    const unsigned gen = generation.load(std::memory_order_acquire);
    if (arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == threads) {
      arrived.store(0);
      site.store(nullptr);
      generation.fetch_add(1, std::memory_order_release);
      futex_wake(generation);
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    while (generation.load(std::memory_order_acquire) == gen) {
      if (failed.load()) throw Aborted{};
      if (const unsigned waiting = stranded()) {
        fail(reached(here, waiting) + "; the other " + std::to_string(threads - waiting) +
             " returned from the kernel");
      }
      const double left = watchdog_s - std::chrono::duration<double>(
                                           std::chrono::steady_clock::now() - start).count();
      if (left <= 0) {
        fail(reached(here, arrived.load()) + " within the watchdog's " + seconds(watchdog_s) +
             " (BNLSTM_EMU_WATCHDOG_S)");
      }
      futex_wait(generation, gen, left);
    }
  }

  void exit() {
    exited.fetch_add(1);
    if (arrived.load() > 0) futex_wake(generation);  // the waiters check stranded()
  }
};

thread_local Block* current = nullptr;

// OS threads kept across launches (creating 256 per block would cost more than the block).
class Pool {
 public:
  static Pool& get() {
    static Pool pool;
    return pool;
  }

  // Runs body(i) for i < threads, one OS thread each; returns when all have returned.
  void run(unsigned threads, const std::function<void(unsigned)>& body) {
    while (workers_.size() < threads) {
      const auto index = static_cast<unsigned>(workers_.size());
      workers_.emplace_back([this, index, seen = round_.load()] { work(index, seen); });
    }
    size_ = static_cast<unsigned>(workers_.size());
    threads_ = threads;
    body_ = &body;
    finished_.store(0);
    round_.fetch_add(1, std::memory_order_release);
    futex_wake(round_);
    for (unsigned f; (f = finished_.load(std::memory_order_acquire)) != size_;) {
      futex_wait(finished_, f);
    }
  }

  ~Pool() {
    stop_ = true;
    round_.fetch_add(1, std::memory_order_release);
    futex_wake(round_);
    for (auto& w : workers_) w.join();
  }

 private:
  // Waits for the round after `seen`; every worker counts itself finished in every round.
  void work(unsigned index, unsigned seen) {
    for (;;) {
      unsigned r;
      while ((r = round_.load(std::memory_order_acquire)) == seen) futex_wait(round_, seen);
      seen = r;
      if (stop_) return;
      if (index < threads_) (*body_)(index);
      const unsigned all = size_;  // read before counting: then run() may return
      if (finished_.fetch_add(1, std::memory_order_acq_rel) + 1 == all) futex_wake(finished_);
    }
  }

  std::vector<std::thread> workers_;
  std::atomic<unsigned> round_{0}, finished_{0};
  unsigned size_ = 0, threads_ = 0;
  const std::function<void(unsigned)>* body_ = nullptr;
  bool stop_ = false;
};

}  // namespace

void sync_threads(const char* site) { current->sync(site); }

void run_grid(const char* kernel, dim3 grid, dim3 block, const std::function<void()>& body) {
  static std::mutex one_launch_at_a_time;
  const std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  const char* order = std::getenv("BNLSTM_EMU_BLOCK_ORDER");
  const bool descending = order != nullptr && std::strcmp(order, "descending") == 0;
  const double watchdog_s = env_seconds("BNLSTM_EMU_WATCHDOG_S", 60);
  const unsigned blocks = grid.x * grid.y * grid.z, threads = block.x * block.y * block.z;
  for (unsigned i = 0; i < blocks; ++i) {
    const unsigned b = descending ? blocks - 1 - i : i;
    Block state(kernel, b, threads, watchdog_s);
    Pool::get().run(threads, [&](unsigned tid) {
      threadIdx = {tid % block.x, tid / block.x % block.y, tid / (block.x * block.y)};
      blockIdx = {b % grid.x, b / grid.x % grid.y, b / (grid.x * grid.y)};
      blockDim = block;
      gridDim = grid;
      current = &state;
      try {
        body();
      } catch (const Aborted&) {
      }
      state.exit();
    });
    if (state.failed.load()) throw std::runtime_error("CUDA emulation: " + state.failure);
  }
}

}  // namespace bnlstm_emu

// The CUDA runtime calls of the time loops (loops_cuda.cpp), on host memory; the launches
// before them have completed, so stream order holds.
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}
