// BN_t(x_t W_ih^T) of every step at once on CPU tensors: input_norm.py's three passes over the
// (T, B, 4H) input product for the C++ backend, each one parallel loop without temporaries of
// that size (the torch ops make four to six passes and allocate as many). The running rows'
// updates stay in input_norm.py: they touch (T, 4H) numbers only. Tasks are (step, chunk of
// columns); each sums its rows in a fixed order and the per-step sums are added in step order,
// so results are bitwise the same for any thread count.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
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

// u = (xw - mean) gamma rstd + bias, every row (rows not running: finite, unused)
template <typename S>
BNLSTM_INLINE void contribution_task(const S* xw, const S* stat, const S* gamma, const S* bias,
                                     int64_t B, int64_t G, int64_t t, int64_t c0, int64_t w,
                                     S* out) {
  S mean[kCols], scale[kCols], shift[kCols];
  for (int64_t u = 0; u < w; ++u) {
    mean[u] = stat[t * 2 * G + c0 + u];
    scale[u] = gamma[c0 + u] * stat[(t * 2 + 1) * G + c0 + u];
    shift[u] = bias ? bias[c0 + u] : S(0);
  }
  for (int64_t b = 0; b < B; ++b) {
    const S* z = xw + (t * B + b) * G + c0;  // out may be xw: no __restrict__
    S* o = out + (t * B + b) * G + c0;
    for (int64_t u = 0; u < w; ++u) o[u] = (z[u] - mean[u]) * scale[u] + shift[u];
  }
}

// dxw of step t over its n running rows (zero on the others), and its sums of dpre and
// dpre xhat (dbias's and dgamma's terms); batch: the step normalised with batch statistics.
template <typename S>
BNLSTM_INLINE void backward_task(const S* dpre, const S* xw, const S* stat, const S* gamma,
                                 int64_t B, int64_t G, int64_t n, bool batch, int64_t t,
                                 int64_t c0, int64_t w, S* dxw, S* sum_d, S* sum_dx) {
  S mean[kCols], rstd[kCols], sd[kCols], sdx[kCols];
  for (int64_t u = 0; u < w; ++u) {
    mean[u] = stat[t * 2 * G + c0 + u];
    rstd[u] = stat[(t * 2 + 1) * G + c0 + u];
    sd[u] = sdx[u] = S(0);
  }
  const int64_t at = t * B * G + c0;
  for (int64_t b = 0; b < n; ++b) {
    const S* __restrict__ d = dpre + at + b * G;
    const S* __restrict__ z = xw + at + b * G;
    for (int64_t u = 0; u < w; ++u) {
      sd[u] += d[u];
      sdx[u] += d[u] * ((z[u] - mean[u]) * rstd[u]);
    }
  }
  S d_mean[kCols], dx_mean[kCols], scale[kCols];
  for (int64_t u = 0; u < w; ++u) {
    sum_d[t * G + c0 + u] = sd[u];
    sum_dx[t * G + c0 + u] = sdx[u];
    d_mean[u] = batch ? sd[u] / S(n) : S(0);
    dx_mean[u] = batch ? sdx[u] / S(n) : S(0);
    scale[u] = gamma[c0 + u] * rstd[u];
  }
  for (int64_t b = 0; b < n; ++b) {
    const S* d = dpre + at + b * G;  // dxw may be dpre: no __restrict__
    const S* __restrict__ z = xw + at + b * G;
    S* o = dxw + at + b * G;
    for (int64_t u = 0; u < w; ++u) {
      o[u] = (d[u] - d_mean[u] - (z[u] - mean[u]) * rstd[u] * dx_mean[u]) * scale[u];
    }
  }
  for (int64_t b = n; b < B; ++b) std::fill_n(dxw + at + b * G, w, S(0));
}

BNLSTM_CLONES void statistics_f32(const float* xw, int64_t B, int64_t G, int64_t n, int64_t t,
                                  int64_t c0, int64_t w, float* mean, float* var) {
  statistics_task<float>(xw, B, G, n, t, c0, w, mean, var);
}

BNLSTM_CLONES void contribution_f32(const float* xw, const float* stat, const float* gamma,
                                    const float* bias, int64_t B, int64_t G, int64_t t,
                                    int64_t c0, int64_t w, float* out) {
  contribution_task<float>(xw, stat, gamma, bias, B, G, t, c0, w, out);
}

BNLSTM_CLONES void backward_f32(const float* dpre, const float* xw, const float* stat,
                                const float* gamma, int64_t B, int64_t G, int64_t n, bool batch,
                                int64_t t, int64_t c0, int64_t w, float* dxw, float* sum_d,
                                float* sum_dx) {
  backward_task<float>(dpre, xw, stat, gamma, B, G, n, batch, t, c0, w, dxw, sum_d, sum_dx);
}

// The per-step passes at float32 through their multiversioned wrappers, else inline.
template <typename S>
struct Passes {
  static void statistics(const S* xw, int64_t B, int64_t G, int64_t n, int64_t t, int64_t c0,
                         int64_t w, S* mean, S* var) {
    if constexpr (std::is_same_v<S, float>) {
      statistics_f32(xw, B, G, n, t, c0, w, mean, var);
    } else {
      statistics_task<S>(xw, B, G, n, t, c0, w, mean, var);
    }
  }
  static void contribution(const S* xw, const S* stat, const S* gamma, const S* bias, int64_t B,
                           int64_t G, int64_t t, int64_t c0, int64_t w, S* out) {
    if constexpr (std::is_same_v<S, float>) {
      contribution_f32(xw, stat, gamma, bias, B, G, t, c0, w, out);
    } else {
      contribution_task<S>(xw, stat, gamma, bias, B, G, t, c0, w, out);
    }
  }
  static void backward(const S* dpre, const S* xw, const S* stat, const S* gamma, int64_t B,
                       int64_t G, int64_t n, bool batch, int64_t t, int64_t c0, int64_t w,
                       S* dxw, S* sum_d, S* sum_dx) {
    if constexpr (std::is_same_v<S, float>) {
      backward_f32(dpre, xw, stat, gamma, B, G, n, batch, t, c0, w, dxw, sum_d, sum_dx);
    } else {
      backward_task<S>(dpre, xw, stat, gamma, B, G, n, batch, t, c0, w, dxw, sum_d, sum_dx);
    }
  }
};

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
      Passes<scalar_t>::statistics(zp, B, G, batch_sizes[t], t, c0, w, mp, vp);
    });
  });
  return {mean, var};
}

// out = u, the input contribution of every step and row (out may be xw itself).
void input_contribution(const Tensor& xw, const Tensor& stat, const Tensor& gamma_ih,
                        const std::optional<Tensor>& bias, Tensor& out) {
  const char* op = "bnlstm::input_contribution";
  TORCH_CHECK(xw.dim() == 3 && xw.size(2) > 0, op, ": xw must be a (T, B, 4H) tensor, got ",
              xw.sizes());
  TORCH_CHECK(xw.scalar_type() == at::kFloat || xw.scalar_type() == at::kDouble, op,
              ": xw must be float32 or float64, got ", xw.scalar_type());
  const int64_t T = xw.size(0), B = xw.size(1), G = xw.size(2);
  check_like(op, "stat", stat, xw, {T, 2, G});
  check_like(op, "gamma_ih", gamma_ih, xw, {G});
  if (bias) check_like(op, "bias", *bias, xw, {G});
  check_like(op, "out", out, xw, {T, B, G});
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
  for (const Tensor* t : {&stat, &gamma_ih}) at::assert_no_overlap(out, *t);
  if (bias) at::assert_no_overlap(out, *bias);
  at::assert_no_partial_overlap(out, xw);  // out may be xw itself, element for element
  const Tensor z = xw.contiguous(), s = stat.contiguous(), g = gamma_ih.contiguous();
  const Tensor b = bias ? bias->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "input_contribution", [&] {
    const scalar_t *zp = z.const_data_ptr<scalar_t>(), *sp = s.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op_ = out.data_ptr<scalar_t>();
    for_each_chunk(T, B, G, [&](int64_t t, int64_t c0, int64_t w) {
      Passes<scalar_t>::contribution(zp, sp, gp, bp, B, G, t, c0, w, op_);
    });
  });
}

// From dpre (T, B, G; zero on rows not running): dxw (into dxw, which may be dpre itself),
// dgamma_ih, dbias. The first batch_steps steps normalised with batch statistics (their
// backward has the batch-mean terms).
std::tuple<Tensor, Tensor> input_backward(const Tensor& dpre, const Tensor& xw,
                                          const Tensor& stat, const Tensor& gamma_ih,
                                          at::IntArrayRef batch_sizes, int64_t batch_steps,
                                          Tensor& dxw) {
  const char* op = "bnlstm::input_backward";
  check_product(op, xw, batch_sizes);
  const int64_t T = xw.size(0), B = xw.size(1), G = xw.size(2);
  check_like(op, "dpre", dpre, xw, {T, B, G});
  check_like(op, "stat", stat, xw, {T, 2, G});
  check_like(op, "gamma_ih", gamma_ih, xw, {G});
  TORCH_CHECK(batch_steps >= 0 && batch_steps <= T, op, ": batch_steps must be within [0, T = ",
              T, "], got ", batch_steps);
  check_like(op, "dxw", dxw, xw, {T, B, G});
  TORCH_CHECK(dxw.is_contiguous(), op, ": dxw must be contiguous");
  for (const Tensor* t : {&xw, &stat, &gamma_ih}) at::assert_no_overlap(dxw, *t);
  at::assert_no_partial_overlap(dxw, dpre);  // dxw may be dpre itself, element for element
  const Tensor d = dpre.contiguous(), z = xw.contiguous(), s = stat.contiguous();
  const Tensor g = gamma_ih.contiguous();
  Tensor sum_d = at::empty({T, G}, z.options()), sum_dx = at::empty({T, G}, z.options());
  Tensor dgamma = at::empty({G}, z.options()), dbias = at::empty({G}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "input_backward", [&] {
    const scalar_t *dp = d.const_data_ptr<scalar_t>(), *zp = z.const_data_ptr<scalar_t>();
    const scalar_t *sp = s.const_data_ptr<scalar_t>(), *gp = g.const_data_ptr<scalar_t>();
    scalar_t *op_ = dxw.data_ptr<scalar_t>(), *sdp = sum_d.data_ptr<scalar_t>();
    scalar_t* sdxp = sum_dx.data_ptr<scalar_t>();
    for_each_chunk(T, B, G, [&](int64_t t, int64_t c0, int64_t w) {
      Passes<scalar_t>::backward(dp, zp, sp, gp, B, G, batch_sizes[t], t < batch_steps, t, c0,
                                 w, op_, sdp, sdxp);
    });
    scalar_t *dgp = dgamma.data_ptr<scalar_t>(), *dbp = dbias.data_ptr<scalar_t>();
    at::parallel_for(0, G, G * T < kSerialWork ? G : kCols, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {  // over steps in order
        scalar_t gsum = 0, bsum = 0;
        for (int64_t t = 0; t < T; ++t) {
          gsum += sdxp[t * G + c];
          bsum += sdp[t * G + c];
        }
        dgp[c] = gsum;
        dbp[c] = bsum;
      }
    });
  });
  return {dgamma, dbias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bnlstm, m) {
  m.def("input_statistics(Tensor xw, int[] batch_sizes) -> (Tensor mean, Tensor var)");
  m.def(
      "input_contribution(Tensor xw, Tensor stat, Tensor gamma_ih, Tensor? bias, "
      "Tensor(a!) out) -> ()");  // out may be xw (then xw's values are replaced by u)
  m.def(
      "input_backward(Tensor dpre, Tensor xw, Tensor stat, Tensor gamma_ih, int[] batch_sizes, "
      "int batch_steps, Tensor(a!) dxw) -> (Tensor dgamma_ih, Tensor dbias)");
  // an uninitialised tensor of like's dtype and device for the Function's (T, B, 4H) buffers
  // (the input product, u, ...), from the ops' reuse cache (cpu_buffers.h)
  m.def("buffer(Tensor like, int[] size) -> Tensor");
}

TORCH_LIBRARY_IMPL(bnlstm, CPU, m) {
  m.impl("input_statistics", &input_statistics);
  m.impl("input_contribution", &input_contribution);
  m.impl("input_backward", &input_backward);
  m.impl("buffer", [](const Tensor& like, at::IntArrayRef size) {
    for (const int64_t s : size) {
      TORCH_CHECK(s >= 0, "bnlstm::buffer: size must be non-negative, got ", size);
    }
    return reusable_empty(size, like.options());
  });
}

}  // namespace bnlstm
