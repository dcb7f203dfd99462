// The emulator's runtime (cuda_emu.h): a pool of OS threads that runs one block at a time (or a
// cooperative launch's blocks all at once), the block barrier with its watchdog, the emulated
// device's limits, and the CUDA runtime calls the time loops make.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
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

constexpr std::size_t kSharedAlign = 128;  // of a block's dynamic shared memory

// Thrown out of the kernel in every thread of a block whose barrier failed.
struct Aborted {};

// What the blocks of one launch share: the first failure, which ends every block.
struct Launch {
  const char* kernel;
  double watchdog_s;
  std::atomic<bool> failed{false};
  std::mutex failure_mutex;
  std::string failure;
  std::vector<std::atomic<unsigned>*> wake_on_failure;  // each block's barrier word

  Launch(const char* kernel, double watchdog_s) : kernel(kernel), watchdog_s(watchdog_s) {}

  [[noreturn]] void fail(unsigned block, const std::string& what) {
    {
      const std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failed.load()) {
        failure = std::string(kernel) + ", block " + std::to_string(block) + ": " + what;
        failed.store(true);
      }
    }
    for (auto* word : wake_on_failure) futex_wake(*word);
    throw Aborted{};
  }
};

// One barrier: of the whole block (__syncthreads) or of one warp (its collective calls, the WMMA
// functions). Arrivals of the current generation, the members that have left the kernel, and
// the site ("file:line") of the generation's first arrival.
struct Barrier {
  const char* kind;  // "__syncthreads" or "warp-collective call"
  unsigned members;
  std::atomic<unsigned> arrived{0}, exited{0}, generation{0};
  std::atomic<const char*> site{nullptr};

  Barrier(const char* kind, unsigned members) : kind(kind), members(members) {}

  // The members waiting here that the rest has left the kernel without reaching, or 0. One
  // snapshot: a member that arrived cannot exit, so a + e == members holds only when neither
  // count can change any more.
  unsigned stranded() const {
    const unsigned e = exited.load(), a = arrived.load();
    return e > 0 && a + e == members ? a : 0;
  }

  std::string reached(const char* here, unsigned waiting) const {
    return std::string(kind) + " at " + where(here) + " reached by " + std::to_string(waiting) +
           " of " + std::to_string(members) + " threads";
  }
};

// A warp: its barrier, how many of its lanes wait at the block's pending __syncthreads (a lane
// there while others wait at a warp-collective call is divergence, which would hang), and what
// its lanes publish to a collective call: [parity of the call][lane], so a lane may publish for
// its next call while the others still read this one.
struct Warp {
  Barrier barrier;
  std::atomic<unsigned> at_block_barrier{0};
  const void* published[2][32][kPublished];

  explicit Warp(unsigned lanes) : barrier("warp-collective call", lanes) {}
};

// One block: its barrier, its warps and its dynamic shared memory.
struct Block {
  Launch& launch;
  unsigned index, threads;
  Barrier barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::atomic<unsigned> spinning{0};  // threads in a spin-wait (__nanosleep)
  std::vector<unsigned char> shared;

  Block(Launch& launch, unsigned index, unsigned threads, size_t shared_bytes)
      : launch(launch), index(index), threads(threads), barrier("__syncthreads", threads),
        shared(shared_bytes + kSharedAlign, 0xff) {
    launch.wake_on_failure.push_back(&barrier.generation);
    for (unsigned first = 0; first < threads; first += 32) {
      warps.push_back(std::make_unique<Warp>(std::min(32u, threads - first)));
      launch.wake_on_failure.push_back(&warps.back()->barrier.generation);
    }
  }

  [[noreturn]] void fail(const std::string& what) { launch.fail(index, what); }

  // Waits at `bar` until every member has arrived at the same site. `diverged` says whether a
  // member of this thread's warp waits at the other kind of barrier. Each side counts its
  // arrival before it checks the other's (sequentially consistent), so of two lanes that
  // diverge, the later sees the earlier and reports; no wake is needed.
  void wait(Barrier& bar, const char* here, const std::function<bool()>& diverged) {
    if (launch.failed.load()) throw Aborted{};
    const char* first = nullptr;
    if (!bar.site.compare_exchange_strong(first, here) && first != here &&
        std::strcmp(first, here) != 0) {
      fail(std::string("divergent ") + bar.kind + ": a thread at " + where(here) +
           " while others wait at " + where(first));
    }
    const unsigned gen = bar.generation.load(std::memory_order_acquire);
    if (bar.arrived.fetch_add(1) + 1 == bar.members) {
      bar.arrived.store(0);
      bar.site.store(nullptr);
      if (&bar == &barrier) clear_at_block_barrier();
      bar.generation.fetch_add(1, std::memory_order_release);
      futex_wake(bar.generation);
      return;
    }
    auto start = std::chrono::steady_clock::now();
    while (bar.generation.load(std::memory_order_acquire) == gen) {
      if (launch.failed.load()) throw Aborted{};
      // a lane of the warp may have left this barrier's completed generation (after this
      // loop's test) for the other barrier: divergence only while this generation still waits
      if (diverged() && bar.generation.load() == gen) {
        fail("divergent warp: a lane at " + where(here) + " (" + bar.kind +
             ") while others of its warp wait at the other kind of barrier");
      }
      if (const unsigned waiting = bar.stranded()) {
        fail(bar.reached(here, waiting) + "; the other " + std::to_string(bar.members - waiting) +
             " returned from the kernel");
      }
      const double watchdog_s = launch.watchdog_s;
      const double left = watchdog_s - std::chrono::duration<double>(
                                           std::chrono::steady_clock::now() - start).count();
      // a thread of the block spins (a grid barrier): its own watchdog reports
      if (left <= 0 && spinning.load() > 0) {
        start = std::chrono::steady_clock::now();
        continue;
      }
      if (left <= 0) {
        fail(bar.reached(here, bar.arrived.load()) + " within the watchdog's " +
             seconds(watchdog_s) + " (BNLSTM_EMU_WATCHDOG_S)");
      }
      futex_wait(bar.generation, gen, left);
    }
  }

  Warp& warp_of(unsigned tid) { return *warps[tid / 32]; }

  void sync(const char* here, unsigned tid) {
    Warp& warp = warp_of(tid);
    warp.at_block_barrier.fetch_add(1);
    wait(barrier, here, [&] { return warp.barrier.arrived.load() > 0; });
  }

  // The last arrival at the block barrier clears every warp's count before releasing anyone.
  void clear_at_block_barrier() {
    for (auto& w : warps) w->at_block_barrier.store(0);
  }

  void warp_sync(const char* here, unsigned tid) {
    Warp& warp = warp_of(tid);
    wait(warp.barrier, here, [&] { return warp.at_block_barrier.load() > 0; });
  }

  void exit(unsigned tid) {
    Warp& warp = warp_of(tid);
    barrier.exited.fetch_add(1);
    warp.barrier.exited.fetch_add(1);
    // the waiters check stranded()
    if (barrier.arrived.load() > 0) futex_wake(barrier.generation);
    if (warp.barrier.arrived.load() > 0) futex_wake(warp.barrier.generation);
  }
};

thread_local Block* current = nullptr;
thread_local unsigned lane_id = 0, thread_id = 0;  // in the warp, in the block
thread_local unsigned collective_calls = 0;         // this thread's warp-collective calls
// when this thread's current spin-wait (__nanosleep calls with no barrier between) began
thread_local std::chrono::steady_clock::time_point spin_start{};

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

// The emulated device: BNLSTM_EMU_SMS SMs (default 4, few: the grid stays small enough to run
// as OS threads) with an H100's per-SM limits.
constexpr int kThreadsPerSm = 2048, kBlocksPerSm = 32;
constexpr size_t kSharedReservedPerBlock = 1024;

int sms() { return static_cast<int>(env_seconds("BNLSTM_EMU_SMS", 4)); }
bool cooperative() { return env_seconds("BNLSTM_EMU_COOPERATIVE", 1) != 0; }
size_t shared_per_block() {
  return static_cast<size_t>(env_seconds("BNLSTM_EMU_SHARED_BYTES", 232448));
}
size_t shared_per_sm() { return shared_per_block() + kSharedReservedPerBlock; }

// Blocks of `threads` threads and `shared` dynamic bytes one SM holds at once.
int blocks_per_sm(int threads, size_t shared) {
  if (threads <= 0 || threads > 1024 || shared > shared_per_block()) return 0;
  const size_t by_shared = shared_per_sm() / (shared + kSharedReservedPerBlock);
  return static_cast<int>(std::min<size_t>({size_t(kThreadsPerSm / threads), kBlocksPerSm,
                                            by_shared}));
}

// Block b's place in the start order: ascending, descending or random:SEED (a permutation).
std::vector<unsigned> start_order(unsigned blocks) {
  std::vector<unsigned> order(blocks);
  std::iota(order.begin(), order.end(), 0u);
  const char* name = std::getenv("BNLSTM_EMU_BLOCK_ORDER");
  const std::string how = name != nullptr ? name : "ascending";
  if (how == "descending") {
    std::reverse(order.begin(), order.end());
  } else if (how.rfind("random:", 0) == 0) {
    std::mt19937 gen(static_cast<unsigned>(std::stoul(how.substr(7))));
    std::shuffle(order.begin(), order.end(), gen);
  } else if (how != "ascending") {
    throw std::invalid_argument("BNLSTM_EMU_BLOCK_ORDER=" + how +
                                ": ascending, descending or random:SEED");
  }
  return order;
}

void enter(Block& block, dim3 grid, dim3 blockdim, unsigned tid) {
  threadIdx = {tid % blockdim.x, tid / blockdim.x % blockdim.y, tid / (blockdim.x * blockdim.y)};
  const unsigned b = block.index;
  blockIdx = {b % grid.x, b / grid.x % grid.y, b / (grid.x * grid.y)};
  blockDim = blockdim;
  gridDim = grid;
  current = &block;
  spin_start = {};
  thread_id = tid;
  lane_id = tid % 32;
  collective_calls = 0;
}

}  // namespace

// The end of this thread's spin-wait, if it was in one.
void end_spin() {
  if (spin_start != std::chrono::steady_clock::time_point{}) {
    spin_start = {};
    current->spinning.fetch_sub(1);
  }
}

void sync_threads(const char* site) {
  end_spin();
  current->sync(site, thread_id);
}

void fail_block(const std::string& what) { current->fail(what); }

Published warp_collective(const char* site, const void* const (&words)[kPublished],
                          int uniform, unsigned& lane) {
  end_spin();
  Warp& warp = current->warp_of(thread_id);
  auto& slot = warp.published[collective_calls++ % 2];
  std::copy(words, words + kPublished, slot[lane_id]);
  current->warp_sync(site, thread_id);
  for (int i = 0; i < uniform; ++i) {
    if (slot[lane_id][i] != slot[0][i]) {
      current->fail("lane " + std::to_string(lane_id) + " passes argument " +
                    std::to_string(i + 1) + " of the warp-collective call at " + where(site) +
                    " unlike lane 0 (every lane must pass the same)");
    }
  }
  lane = lane_id;
  return reinterpret_cast<Published>(&slot[0]);
}

// aligned as the kernels declare it (__align__(128)), as a GPU's shared window is
unsigned char* dynamic_shared() {
  const auto at = reinterpret_cast<std::uintptr_t>(current->shared.data());
  return current->shared.data() + (kSharedAlign - at % kSharedAlign) % kSharedAlign;
}

void nanosleep(unsigned ns) {
  Launch& launch = current->launch;
  if (launch.failed.load()) throw Aborted{};
  const auto now = std::chrono::steady_clock::now();
  if (spin_start == std::chrono::steady_clock::time_point{}) {
    spin_start = now;
    current->spinning.fetch_add(1);
  }
  if (std::chrono::duration<double>(now - spin_start).count() > launch.watchdog_s) {
    current->fail("a thread spun (__nanosleep) past the watchdog's " +
                  seconds(launch.watchdog_s) +
                  " (BNLSTM_EMU_WATCHDOG_S): a grid barrier some block never reaches");
  }
  // a real pause: the spinning thread gives the cores to the blocks it waits for
  std::this_thread::sleep_for(std::chrono::nanoseconds(std::max(ns, 20000u)));
}

// One launch at a time, ordinary or cooperative: they share the pool.
std::mutex& one_launch_at_a_time() {
  static std::mutex mutex;
  return mutex;
}

// An emulated thread's run of the kernel, once it has entered its block: a failed barrier
// ends it (Aborted), then it leaves any spin-wait and the block.
static void run_kernel(Block& block, const std::function<void()>& body) {
  try {
    body();
  } catch (const Aborted&) {
  }
  end_spin();
  block.exit(thread_id);
}

void run_grid(const char* kernel, dim3 grid, dim3 block, size_t shared,
              const std::function<void()>& body) {
  if (shared > shared_per_block()) {
    throw std::runtime_error(std::string("CUDA emulation: ") + kernel + " launched with " +
                             std::to_string(shared) + " bytes of shared memory, over the " +
                             std::to_string(shared_per_block()) + " a block may have");
  }
  const std::lock_guard<std::mutex> lock(one_launch_at_a_time());
  const double watchdog_s = env_seconds("BNLSTM_EMU_WATCHDOG_S", 60);
  const unsigned blocks = grid.x * grid.y * grid.z, threads = block.x * block.y * block.z;
  for (const unsigned b : start_order(blocks)) {
    Launch launch(kernel, watchdog_s);
    Block state(launch, b, threads, shared);
    Pool::get().run(threads, [&](unsigned tid) {
      enter(state, grid, block, tid);
      run_kernel(state, body);
    });
    if (launch.failed.load()) throw std::runtime_error("CUDA emulation: " + launch.failure);
  }
}

cudaError_t run_cooperative(const char* kernel, dim3 grid, dim3 block, size_t shared,
                            const std::function<void()>& body) {
  const unsigned blocks = grid.x * grid.y * grid.z, threads = block.x * block.y * block.z;
  if (blocks > unsigned(sms() * blocks_per_sm(static_cast<int>(threads), shared))) {
    return cudaErrorCooperativeLaunchTooLarge;
  }
  const std::lock_guard<std::mutex> lock(one_launch_at_a_time());
  Launch launch(kernel, env_seconds("BNLSTM_EMU_WATCHDOG_S", 60));
  std::vector<std::unique_ptr<Block>> states;
  for (unsigned b = 0; b < blocks; ++b) {
    states.push_back(std::make_unique<Block>(launch, b, threads, shared));
  }
  // Block order[r] starts once every thread of order[r - 1] has entered the kernel.
  const std::vector<unsigned> order = start_order(blocks);
  std::vector<unsigned> rank(blocks);
  for (unsigned r = 0; r < blocks; ++r) rank[order[r]] = r;
  std::atomic<unsigned> started{0}, entered{0};
  Pool::get().run(blocks * threads, [&](unsigned i) {
    const unsigned r = i / threads;
    for (unsigned s; (s = started.load(std::memory_order_acquire)) < r;) futex_wait(started, s);
    Block& state = *states[order[r]];
    enter(state, grid, block, i % threads);
    if (entered.fetch_add(1, std::memory_order_acq_rel) + 1 == (r + 1) * threads) {
      started.fetch_add(1, std::memory_order_release);
      futex_wake(started);
    }
    run_kernel(state, body);
  });
  if (launch.failed.load()) throw std::runtime_error("CUDA emulation: " + launch.failure);
  return cudaSuccess;
}

}  // namespace bnlstm_emu

// The emulated device's attributes and occupancy, as loops_cuda.cpp and the launchers ask them.
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = bnlstm_emu::sms(); return cudaSuccess;
    case cudaDevAttrCooperativeLaunch:
      *value = bnlstm_emu::cooperative();
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(bnlstm_emu::shared_per_block());
      return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute attr, int value) {
  return attr == cudaFuncAttributeMaxDynamicSharedMemorySize && value >= 0 &&
                 size_t(value) <= bnlstm_emu::shared_per_block()
             ? cudaSuccess
             : cudaErrorInvalidValue;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int threads,
                                                          size_t shared) {
  *blocks = bnlstm_emu::blocks_per_sm(threads, shared);
  return cudaSuccess;
}

cudaError_t cudaGetLastError() { return cudaSuccess; }

// The CUDA runtime calls of the time loops (loops_cuda.cpp), on host memory; the launches
// before them have completed, so stream order holds.
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  std::memset(ptr, value, count);
  return cudaSuccess;
}
