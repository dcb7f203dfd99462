// The CUDA names the kernels use, given a CPU meaning, so the unmodified kernel templates
// (step_common.cuh, persistent_common.cuh, persistent_fwd.cuh, persistent_bwd.cuh) compile with
// the host compiler and run on CPU memory: every CUDA thread of a block is an OS thread,
// __syncthreads is a barrier of the block's threads (a watchdog reports one that only part of
// the block reaches). An ordinary launch runs its blocks one after another, each with its
// dynamic shared memory, and a block's static __shared__ variables are one object its threads
// share. A cooperative launch runs every block at once, each with its own dynamic shared
// memory, on an emulated device (BNLSTM_EMU_SMS SMs, 2048 threads and BNLSTM_EMU_SHARED_BYTES of
// shared memory each; BNLSTM_EMU_COOPERATIVE=0: a device without cooperative launch) that
// refuses a grid it cannot hold, as a GPU does. Blocks start in the
// order BNLSTM_EMU_BLOCK_ORDER names (ascending, descending or random:SEED). Include before the
// kernels.
//
// The toolkit's own host headers (-I $CUDA_HOME/include) supply dim3, uint3, cudaStream_t, the
// __half / __nv_bfloat16 host conversions, and __global__ / __device__ as nothing.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <string>
#include <tuple>

// One object per kernel instantiation, which the threads of the running block share; blocks
// never overlap, and the emulator runs one launch at a time.
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)
#define BNLSTM_EMU_STR2(x) #x
#define BNLSTM_EMU_STR(x) BNLSTM_EMU_STR2(x)
#define __syncthreads() ::bnlstm_emu::sync_threads(__FILE__ ":" BNLSTM_EMU_STR(__LINE__))
// the launch site of step_*.cuh; the launch returns when every block has run, so one stream
// (in order) is all there is
#define BNLSTM_LAUNCH(kernel, grid, block, shared, stream, ...) \
  ((void)(stream), ::bnlstm_emu::launch<&kernel>(grid, block, shared, __VA_ARGS__))
// cudaLaunchCooperativeKernel's site: returns cudaErrorCooperativeLaunchTooLarge for a grid the
// emulated device cannot hold at once, else runs every block at once and returns cudaSuccess
#define BNLSTM_LAUNCH_COOPERATIVE(kernel, grid, block, shared, stream, ...) \
  ((void)(stream), ::bnlstm_emu::launch_cooperative<&kernel>(grid, block, shared, __VA_ARGS__))
// a launch's dynamic shared memory: the running block's own buffer
#define BNLSTM_DYNAMIC_SHARED(name) \
  unsigned char* const name = ::bnlstm_emu::dynamic_shared()
// a spin-wait's pause; the watchdog reports a spin that outlasts it (a grid barrier some block
// never reaches), and a failure elsewhere in the launch ends it
#define __nanosleep(ns) ::bnlstm_emu::nanosleep(ns)

// per emulated thread, set before it enters the kernel
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

namespace bnlstm_emu {

// A barrier of the running block's threads. `site` ("file:line") must be the same for every
// thread of a generation: a __syncthreads in divergent code is reported, as is one that part of
// the block never reaches (the others returned, or the watchdog's BNLSTM_EMU_WATCHDOG_S passed).
void sync_threads(const char* site);

// Runs body() on grid x block threads, block by block, each with `shared` bytes of dynamic
// shared memory (filled as run_cooperative's); throws std::runtime_error naming `kernel` when a
// barrier fails or `shared` is over a block's limit.
void run_grid(const char* kernel, dim3 grid, dim3 block, size_t shared,
              const std::function<void()>& body);

// Runs body() on grid x block threads all at once, each block with `shared` bytes of its own
// (filled with 0xff bytes: an unwritten float reads as NaN); the blocks start one after another
// in BNLSTM_EMU_BLOCK_ORDER. Refuses (cudaErrorCooperativeLaunchTooLarge) a grid larger than
// the emulated device holds; throws as run_grid does.
cudaError_t run_cooperative(const char* kernel, dim3 grid, dim3 block, size_t shared,
                            const std::function<void()>& body);

unsigned char* dynamic_shared();
void nanosleep(unsigned ns);

// Reports a kernel's misuse in the running block (as a failed barrier is: the launch throws).
[[noreturn]] void fail_block(const std::string& what);

// A warp-collective call at `site` (the WMMA functions of wmma_emu.h): this lane publishes
// `words`, the first `uniform` of which every lane must pass alike (a pointer, a leading
// dimension), then waits for every lane of its warp at the same site; a lane that returned, waits
// at a __syncthreads or at another call is reported. Returns what each lane published,
// [lane][kPublished], readable until this lane's next collective call, and sets `lane`.
constexpr int kPublished = 4;
using Published = const void* const (*)[kPublished];
Published warp_collective(const char* site, const void* const (&words)[kPublished], int uniform,
                          unsigned& lane);

// "bnlstm::fwd_step_kernel<float>" for kernel = &bnlstm::fwd_step_kernel<float> (GCC and
// Clang spell the template argument in __PRETTY_FUNCTION__).
template <auto kernel>
const char* kernel_name() {
  static const std::string name = [f = std::string(__PRETTY_FUNCTION__)] {
    const std::string key = "kernel = ";
    const auto at = f.find(key);
    if (at == std::string::npos) return f;
    auto begin = at + key.size(), end = f.find_first_of(";]", begin);
    if (f.compare(begin, 1, "&") == 0) ++begin;
    return f.substr(begin, end - begin);
  }();
  return name.c_str();
}

// Each thread calls the kernel with its own copy of the arguments, as CUDA passes them.
template <auto kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t shared, const Args&... args) {
  const std::tuple<Args...> params(args...);
  run_grid(kernel_name<kernel>(), grid, block, shared, [&] { std::apply(*kernel, params); });
}

template <auto kernel, typename... Args>
cudaError_t launch_cooperative(dim3 grid, dim3 block, size_t shared, const Args&... args) {
  const std::tuple<Args...> params(args...);
  return run_cooperative(kernel_name<kernel>(), grid, block, shared,
                         [&] { std::apply(*kernel, params); });
}

}  // namespace bnlstm_emu

#include "wmma_emu.h"
