// The CUDA time loops on the current stream of the tensors' device, no Python in between: the
// forward and the backward each as one persistent cooperative launch where the device holds its
// grid (plan_persistent_fwd, plan_persistent_bwd), else the same kernel launched once per step
// (plan_step_fwd, plan_step_bwd).
#ifdef BNLSTM_CUDA_EMULATION  // the kernels on CPU threads (csrc/emulation/)
#include "emulation/cuda_context.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <string>
#include <type_traits>
#include <vector>

#include "launch.h"
#include "loops.h"

namespace bnlstm {
namespace {

template <typename T> struct Tag { using type = T; };

// Calls f(Tag<S>{}) with S the CUDA type of `dtype`.
template <typename F>
void dispatch(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(Tag<float>{});
    case at::kDouble: return f(Tag<double>{});
    case at::kHalf: return f(Tag<__half>{});
    case at::kBFloat16: return f(Tag<__nv_bfloat16>{});
    default: TORCH_CHECK(false, "bnlstm: unsupported dtype ", dtype);
  }
}

// values on the device without a copy from host memory, one fill or arange per run of values
// that rise by a constant step (integers only), as bnlstm_cuda/device_numbers.py builds them
// while a CUDA graph is captured: a copy from a pinned buffer would be replayed from that
// buffer long after it was freed.
template <typename V>
at::Tensor from_runs(const std::vector<V>& values, const at::TensorOptions& options) {
  std::vector<at::Tensor> parts;
  for (size_t i = 0; i < values.size();) {
    size_t j = i + 1;
    const V step = std::is_integral_v<V> && j < values.size() ? values[j] - values[i] : V(0);
    while (j < values.size() && values[j] - values[j - 1] == step) ++j;
    const auto length = static_cast<int64_t>(j - i);
    parts.push_back(step != V(0)
                        ? at::arange(values[i], values[i] + step * length, step, options)
                        : at::full({length}, values[i], options));
    i = j;
  }
  return at::cat(parts);
}

// A persistent kernel's per-step numbers on `device`: eagerly pinned and copied without
// blocking, so the host does not wait for the stream (the caching host allocator keeps a pinned
// buffer until its copy has run), or built on the device while a graph is captured; the
// emulation's device is the CPU itself.
template <typename V>
at::Tensor on_device(const std::vector<V>& values, at::ScalarType dtype, c10::Device device) {
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    return from_runs(values, at::TensorOptions().device(device).dtype(dtype));
  }
  const at::Tensor host = at::tensor(values, at::TensorOptions().dtype(dtype));
  return device.is_cpu() ? host : host.pin_memory().to(device, dtype, true);
}

// n[0 .. T] (n[T] = 0) of the running rows, then `more` (T values) as int32.
std::vector<int> running_rows_then(at::IntArrayRef batch_sizes, const std::vector<int>& more) {
  std::vector<int> ints(batch_sizes.begin(), batch_sizes.end());
  ints.push_back(0);
  ints.insert(ints.end(), more.begin(), more.end());
  return ints;
}

// Whether the loops may run persistent (use_persistent_cuda): on unless turned off, e.g. to time
// the per-step kernels.
std::atomic<bool> persistent_on{true};

// The per-step launch of the forward or the backward of a layer with H units, `plan`'s why kept.
template <typename S>
void plan_step_of(bool backward, int64_t H, PersistentPlan& plan) {
  const cudaError_t status = backward ? plan_step_bwd<S>(H, plan) : plan_step_fwd<S>(H, plan);
  TORCH_CHECK(status != cudaErrorInvalidValue, "bnlstm: no block of the per-step kernels fits ",
              "the device's shared memory (H=", H, ")");
  C10_CUDA_CHECK(status);
}

// How the forward or the backward of a layer with H units runs: persistent unless turned off or
// the device cannot hold it, else per step (with that launch's plan).
template <typename S>
PersistentPlan plan_of(bool backward, int64_t H) {
  PersistentPlan plan;
  if (!persistent_on.load()) {
    plan.why = "the persistent kernels are turned off (bnlstm_cuda.backends.cpp.use_persistent)";
  } else {
    C10_CUDA_CHECK(backward ? plan_persistent_bwd<S>(H, plan) : plan_persistent_fwd<S>(H, plan));
  }
  if (!plan.persistent) plan_step_of<S>(backward, H, plan);
  return plan;
}

// What a plan says in words: the persistent launch, or per step, why, and its launches.
std::string path_in_words(const PersistentPlan& plan) {
  const std::string blocks = std::to_string(plan.blocks) + " blocks of " +
                             std::to_string(plan.units) + " units (" +
                             std::to_string(plan.threads) + " threads, " +
                             std::to_string(plan.shared_bytes) + " bytes of shared memory)";
  if (!plan.persistent) return std::string("per-step: ") + plan.why + "; " + blocks;
  return "persistent: " + blocks;
}

}  // namespace

bool use_persistent_cuda(bool on) { return persistent_on.exchange(on); }

std::string forward_path_cuda(at::ScalarType dtype, int64_t H) {
  PersistentPlan plan;
  dispatch(dtype, [&](auto tag) { plan = plan_of<typename decltype(tag)::type>(false, H); });
  return path_in_words(plan);
}

std::string backward_path_cuda(at::ScalarType dtype, int64_t H) {
  PersistentPlan plan;
  dispatch(dtype, [&](auto tag) { plan = plan_of<typename decltype(tag)::type>(true, H); });
  return path_in_words(plan);
}

void forward_steps_cuda(const FwdParams& p, const at::Tensor& steps, const ForwardPlan& plan) {
  const c10::cuda::CUDAGuard guard(steps.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t T = steps.size(0);
  dispatch(steps.scalar_type(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    if (plan.batch_sizes[T - 1] < p.B) {  // rows that stop running: zero, as loops.h promises
      const size_t acc = std::is_same_v<S, double> ? sizeof(double) : sizeof(float);
      const size_t hw = T * p.B * 4 * p.H * acc, cell = T * p.B * p.H * acc;
      C10_CUDA_CHECK(cudaMemsetAsync(p.hw, 0, hw, stream));
      C10_CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(p.cell) + p.B * p.H * acc, 0, cell,
                                     stream));
    }
    PersistentPlan plan_t = plan_of<S>(false, p.H);
    const std::vector<int> rows(plan.rows.begin(), plan.rows.end());
    const at::Tensor n_rows =
        on_device(running_rows_then(plan.batch_sizes, rows), at::kInt, steps.device());
    const at::Tensor factors = on_device(
        std::vector<double>(plan.factors.begin(), plan.factors.end()), at::kDouble,
        steps.device());
    const int* n = n_rows.data_ptr<int>();
    if (plan_t.persistent) {
      at::Tensor arrivals = at::zeros({1}, steps.options().dtype(at::kInt));
      const cudaError_t status = launch_persistent_fwd<S>(
          p, plan_t, n, n + T + 1, factors.data_ptr<double>(), static_cast<int>(T),
          reinterpret_cast<unsigned*>(arrivals.data_ptr<int>()), stream);
      if (status != cudaErrorCooperativeLaunchTooLarge) {
        C10_CUDA_CHECK(status);
        return;
      }
      (void)cudaGetLastError();  // refused, nothing ran (not a sticky error): run per step
      plan_step_of<S>(false, p.H, plan_t);
    }
    for (int64_t t = 0; t < T; ++t) {
      launch_step_fwd<S>(p, plan_t, n, n + T + 1, factors.data_ptr<double>(),
                         static_cast<int>(t), stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

void backward_steps_cuda(const BwdParams& p, const at::Tensor& steps, const BackwardPlan& plan) {
  const c10::cuda::CUDAGuard guard(steps.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t T = steps.size(0);
  dispatch(steps.scalar_type(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    PersistentPlan plan_t = plan_of<S>(true, p.H);
    std::vector<int> use_batch(T);
    for (int64_t t = 0; t < T; ++t) use_batch[t] = plan.use_batch.get(t);
    const at::Tensor table =
        on_device(running_rows_then(plan.batch_sizes, use_batch), at::kInt, steps.device());
    const int* n = table.data_ptr<int>();
    if (plan_t.persistent) {
      at::Tensor arrivals = at::zeros({1}, steps.options().dtype(at::kInt));
      const cudaError_t status = launch_persistent_bwd<S>(
          p, plan_t, n, n + T + 1, static_cast<int>(T),
          reinterpret_cast<unsigned*>(arrivals.data_ptr<int>()), stream);
      if (status != cudaErrorCooperativeLaunchTooLarge) {
        C10_CUDA_CHECK(status);
        return;
      }
      (void)cudaGetLastError();  // refused, nothing ran (not a sticky error): run per step
      plan_step_of<S>(true, p.H, plan_t);
    }
    for (int64_t t = T - 1; t >= 0; --t) {
      launch_step_bwd<S>(p, plan_t, n, n + T + 1, static_cast<int>(t), stream);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace bnlstm
