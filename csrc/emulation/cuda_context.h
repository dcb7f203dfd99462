// What loops_cuda.cpp takes from ATen's CUDA headers, in the emulation build, where the CUDA
// loops run on CPU tensors: no device to guard, one stream (launches complete in order), and
// the emulator throws its errors at the launch.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cstdlib>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "the CUDA emulation runs on CPU tensors, got ", device);
  }
};
// A graph "capture" the tests switch on (BNLSTM_EMU_CAPTURING=1), so that the tables a capture
// builds on the device are checked on the CPU too.
enum class CaptureStatus { None, Active };
inline CaptureStatus currentStreamCaptureStatusMayInitCtx() {
  const char* v = std::getenv("BNLSTM_EMU_CAPTURING");
  return v != nullptr && v[0] == '1' ? CaptureStatus::Active : CaptureStatus::None;
}
}  // namespace c10::cuda

namespace at::cuda {
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace at::cuda

#define C10_CUDA_CHECK(expr) TORCH_CHECK((expr) == cudaSuccess, #expr " failed")
#define C10_CUDA_KERNEL_LAUNCH_CHECK()
