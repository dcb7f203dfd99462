// The kernels' plans (csrc/persistent_common.cuh: plan_persistent_fwd and plan_persistent_bwd,
// and where those refuse plan_step_fwd and plan_step_bwd, the very code the extension runs) on
// an H100 described here, for tools/cuda_report.py: the host compiler builds the kernel
// templates as the CPU emulation does (csrc/emulation/cuda_emu.h), and the four CUDA
// runtime calls the plan makes are answered below, the occupancy by NVIDIA's own calculator
// (cuda_occupancy.h) from the registers and static shared memory the cubin reports. So the
// units, blocks and shared bytes come from the C++ itself, not from a copy of its formulas.
//
// Usage: persistent_plan KERNEL DTYPE REGS STATIC_SHARED H...
//   (KERNEL: fwd or bwd; DTYPE: f32, f64, f16 or bf16)
// Prints per H: "H persistent units blocks threads shared per_sm why": the persistent plan, or
// where it refuses (persistent 0, per_sm 0) the per-step launch and the refusal's why.
#include "../csrc/emulation/cuda_emu.h"

#include <cuda_occupancy.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../csrc/launch.h"
#include "../csrc/persistent_bwd.cuh"
#include "../csrc/persistent_fwd.cuh"

namespace {

constexpr int kSms = 132;
constexpr size_t kSharedPerBlockOptin = 227 * 1024, kSharedPerSm = 228 * 1024;

// the kernel's resources (argv) and its dynamic shared memory limit (cudaFuncSetAttribute)
cudaOccFuncAttributes kernel_attributes;

}  // namespace

// The kernel bodies are compiled, never run: the emulator's hooks they name do nothing here.
namespace bnlstm_emu {
void sync_threads(const char*) {}
unsigned char* dynamic_shared() { return nullptr; }
void nanosleep(unsigned) {}
void fail_block(const std::string&) { std::abort(); }
Published warp_collective(const char*, const void* const (&)[kPublished], int, unsigned&) {
  return nullptr;
}
}  // namespace bnlstm_emu

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = kSms; return cudaSuccess;
    case cudaDevAttrCooperativeLaunch: *value = 1; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = kSharedPerBlockOptin; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      size_t(value) + kernel_attributes.sharedSizeBytes > kSharedPerBlockOptin) {
    return cudaErrorInvalidValue;
  }
  kernel_attributes.shmemLimitConfig = FUNC_SHMEM_LIMIT_OPTIN;
  kernel_attributes.maxDynamicSharedSizeBytes = size_t(value);
  return cudaSuccess;
}

// Blocks of `threads` threads and `shared` dynamic bytes an SM holds at once, or -1.
int blocks_per_sm(int threads, size_t shared) {
  cudaOccDeviceProp h100;
  h100.computeMajor = 9;
  h100.maxThreadsPerBlock = 1024;
  h100.maxThreadsPerMultiprocessor = 2048;
  h100.regsPerBlock = h100.regsPerMultiprocessor = 64 * 1024;
  h100.warpSize = 32;
  h100.sharedMemPerBlock = 48 * 1024;
  h100.sharedMemPerMultiprocessor = kSharedPerSm;
  h100.numSms = kSms;
  h100.sharedMemPerBlockOptin = kSharedPerBlockOptin;
  h100.reservedSharedMemPerBlock = 1024;
  const cudaOccDeviceState state;
  cudaOccResult result;
  return cudaOccMaxActiveBlocksPerMultiprocessor(&result, &h100, &kernel_attributes, &state,
                                                 threads, shared) == CUDA_OCC_SUCCESS
             ? result.activeBlocksPerMultiprocessor
             : -1;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int threads,
                                                          size_t shared) {
  *blocks = blocks_per_sm(threads, shared);
  return *blocks < 0 ? cudaErrorInvalidValue : cudaSuccess;
}

template <typename S>
int plan_all(bool backward, int argc, char** argv) {
  kernel_attributes.maxThreadsPerBlock = bnlstm::kPersistMaxThreads;  // its __launch_bounds__
  kernel_attributes.numRegs = std::atoi(argv[3]);
  kernel_attributes.sharedSizeBytes = std::strtoull(argv[4], nullptr, 10);
  for (int i = 5; i < argc; ++i) {
    const int64_t H = std::atoll(argv[i]);
    bnlstm::PersistentPlan plan;
    if ((backward ? bnlstm::plan_persistent_bwd<S>(H, plan)
                  : bnlstm::plan_persistent_fwd<S>(H, plan)) != cudaSuccess) {
      return 1;
    }
    if (!plan.persistent && (backward ? bnlstm::plan_step_bwd<S>(H, plan)
                                      : bnlstm::plan_step_fwd<S>(H, plan)) != cudaSuccess) {
      return 1;
    }
    const int per_sm = plan.persistent ? blocks_per_sm(plan.threads, plan.shared_bytes) : 0;
    std::printf("%lld %d %d %d %d %zu %d %s\n", static_cast<long long>(H), plan.persistent,
                plan.units, plan.blocks, plan.threads, plan.shared_bytes, per_sm, plan.why);
  }
  return 0;
}

int main(int argc, char** argv) {
  const std::string kernel = argc > 5 ? argv[1] : "", dtype = argc > 5 ? argv[2] : "";
  if (kernel == "fwd" || kernel == "bwd") {
    const bool backward = kernel == "bwd";
    if (dtype == "f32") return plan_all<float>(backward, argc, argv);
    if (dtype == "f64") return plan_all<double>(backward, argc, argv);
    if (dtype == "f16") return plan_all<__half>(backward, argc, argv);
    if (dtype == "bf16") return plan_all<__nv_bfloat16>(backward, argc, argv);
  }
  std::fprintf(stderr, "usage: %s fwd|bwd f32|f64|f16|bf16 REGS STATIC_SHARED H...\n", argv[0]);
  return 2;
}
