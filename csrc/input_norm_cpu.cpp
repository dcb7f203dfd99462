// BN_t(x_t W_ih^T)'s batch statistics of every step at once on CPU tensors, for the C++
// backend: one parallel pass over the (T, B, 4H) input product without temporaries of its size
// (the torch ops of input_norm.py make several passes and allocate as many). The CPU loops
// normalise the product with them as they read each step, and do that norm's backward in their
// steps (loops_cpu.cpp). The running rows' updates stay in input_norm.py: they touch (T, 4H)
// numbers only. Tasks are (step, chunk of columns), each summing its rows in a fixed order, so
// results are bitwise the same for any thread count. Also: the ops' reusable buffers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "cpu_buffers.h"
#include "cpu_passes.h"
#include "op_checks.h"

namespace bnlstm {
namespace {

using at::Tensor;

constexpr int64_t kCols = 256;           // columns per task: its sums stay in L1
constexpr int64_t kSerialWork = 1 << 16;  // elements below which one thread does it all

// task(t, c0, w) for every step t < T and chunk of columns [c0, c0 + w) of G.
template <typename F>
void for_each_chunk(int64_t T, int64_t B, int64_t G, const F& task) {
  const int64_t chunks = (G + kCols - 1) / kCols, tasks = T * chunks;
  at::parallel_for(0, tasks, T * B * G < kSerialWork ? tasks : 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t c0 = (k % chunks) * kCols;
      task(k / chunks, c0, std::min(kCols, G - c0));
    }
  });
}

// xw: (T, B, G) float32 or float64 on the CPU, G = 4H; batch_sizes: T non-increasing counts
// of running rows in [1, B] (the running rows are a prefix of the batch).
void check_product(const char* op, const Tensor& xw, at::IntArrayRef batch_sizes) {
  TORCH_CHECK(xw.dim() == 3 && xw.size(2) > 0 && xw.size(2) % 4 == 0, op,
              ": xw must be a (T, B, 4H) tensor, got ", xw.sizes());
  TORCH_CHECK(xw.scalar_type() == at::kFloat || xw.scalar_type() == at::kDouble, op,
              ": xw must be float32 or float64, got ", xw.scalar_type());
  check_batch_sizes(op, batch_sizes, xw.size(0), xw.size(1));
}

template <typename S>
BNLSTM_INLINE void statistics_task(const S* xw, int64_t B, int64_t G, int64_t n, int64_t t,
                                   int64_t c0, int64_t w, S* mean, S* var) {
  S total[kCols], centred[kCols];
  feature_sums(xw + t * B * G + c0, G, n, w, total, centred);
  for (int64_t u = 0; u < w; ++u) {
    mean[t * G + c0 + u] = total[u] / S(n);
    var[t * G + c0 + u] = centred[u] / S(n);
  }
}

BNLSTM_CLONES void statistics_f32(const float* xw, int64_t B, int64_t G, int64_t n, int64_t t,
                                  int64_t c0, int64_t w, float* mean, float* var) {
  statistics_task<float>(xw, B, G, n, t, c0, w, mean, var);
}

// A step's statistics: at float32 through the multiversioned wrapper, else inline.
template <typename S>
void statistics(const S* xw, int64_t B, int64_t G, int64_t n, int64_t t, int64_t c0, int64_t w,
                S* mean, S* var) {
  if constexpr (std::is_same_v<S, float>) {
    statistics_f32(xw, B, G, n, t, c0, w, mean, var);
  } else {
    statistics_task<S>(xw, B, G, n, t, c0, w, mean, var);
  }
}

// Per step t < batch_sizes.size(): the mean and biased variance (T, G) of xw over its running
// rows, two-pass.
std::tuple<Tensor, Tensor> input_statistics(const Tensor& xw, at::IntArrayRef batch_sizes) {
  const char* op = "bnlstm::input_statistics";
  check_product(op, xw, batch_sizes);
  TORCH_CHECK(xw.size(1) >= 1, op, ": batch statistics need running rows, xw has none");
  const Tensor z = xw.contiguous();
  const int64_t T = z.size(0), B = z.size(1), G = z.size(2);
  Tensor mean = at::empty({T, G}, z.options()), var = at::empty({T, G}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "input_statistics", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t *mp = mean.data_ptr<scalar_t>(), *vp = var.data_ptr<scalar_t>();
    for_each_chunk(T, B, G, [&](int64_t t, int64_t c0, int64_t w) {
      statistics<scalar_t>(zp, B, G, batch_sizes[t], t, c0, w, mp, vp);
    });
  });
  return {mean, var};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bnlstm, m) {
  m.def("input_statistics(Tensor xw, int[] batch_sizes) -> (Tensor mean, Tensor var)");
  // an uninitialised tensor of like's dtype and device for the Function's (T, B, 4H) buffers
  // (the input product, h_{t-1} for dW_hh), from the ops' reuse cache (cpu_buffers.h)
  m.def("buffer(Tensor like, int[] size) -> Tensor");
}

TORCH_LIBRARY_IMPL(bnlstm, CPU, m) {
  m.impl("input_statistics", &input_statistics);
  m.impl("buffer", [](const Tensor& like, at::IntArrayRef size) {
    for (const int64_t s : size) {
      TORCH_CHECK(s >= 0, "bnlstm::buffer: size must be non-negative, got ", size);
    }
    return reusable_empty(size, like.options());
  });
}

}  // namespace bnlstm
