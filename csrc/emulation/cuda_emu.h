// The CUDA names the step kernels use, given a CPU meaning, so the unmodified kernel templates
// (step_common.cuh, step_fwd.cuh, step_bwd.cuh) compile with the host compiler and run on CPU
// memory: every CUDA thread of a block is an OS thread, __syncthreads is a barrier of the
// block's threads (a watchdog reports one that only part of the block reaches), and a block's
// __shared__ variables are one object its threads share. Blocks run one after another, in the
// order BNLSTM_EMU_BLOCK_ORDER names (ascending, or descending). Include before the kernels.
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
#define BNLSTM_LAUNCH(kernel, grid, block, stream, ...) \
  ((void)(stream), ::bnlstm_emu::launch<&kernel>(grid, block, __VA_ARGS__))

// per emulated thread, set before it enters the kernel
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

namespace bnlstm_emu {

// A barrier of the running block's threads. `site` ("file:line") must be the same for every
// thread of a generation: a __syncthreads in divergent code is reported, as is one that part of
// the block never reaches (the others returned, or the watchdog's BNLSTM_EMU_WATCHDOG_S passed).
void sync_threads(const char* site);

// Runs body() on grid x block threads, block by block; throws std::runtime_error naming
// `kernel` when a barrier fails.
void run_grid(const char* kernel, dim3 grid, dim3 block, const std::function<void()>& body);

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
void launch(dim3 grid, dim3 block, const Args&... args) {
  const std::tuple<Args...> params(args...);
  run_grid(kernel_name<kernel>(), grid, block, [&] { std::apply(*kernel, params); });
}

}  // namespace bnlstm_emu
