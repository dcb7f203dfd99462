// The bnlstm::forward_loop / bnlstm::backward_loop ops: schemas, argument checks, the outputs,
// and per dispatch key the time loops of that device (loops.h): CPU always, CUDA when built
// with it. The hoisted work (the input GEMM and its batch statistics, the weight gradients)
// stays in bnlstm_cuda/function.py and input_norm.py; that norm's normalisation and backward
// run there too, or inside the CPU loops where the ops get input_stat.
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <initializer_list>
#include <tuple>

#include "bnlstm.h"
#include "cpu_buffers.h"
#include "loops.h"
#include "op_checks.h"

namespace bnlstm {
namespace {

using at::Tensor;

at::ScalarType accumulator(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The recurrence's weights, of a (T, B, 4H) u: their shapes, u's device, the layer's dtype S.
void check_weights(const char* op, const Tensor& u, const Tensor& weight_hh,
                   const Tensor& gamma_hh, const Tensor& gamma_c, const Tensor& beta_c) {
  const int64_t G = u.size(2), H = G / 4;
  check_like(op, "weight_hh", weight_hh, u, {G, H}, /*same_dtype=*/false);
  check_like(op, "gamma_hh", gamma_hh, weight_hh, {G});
  check_like(op, "gamma_c", gamma_c, weight_hh, {H});
  check_like(op, "beta_c", beta_c, weight_hh, {H});
}

// u is (T, B, 4H) with T >= 1 and H >= 1 (B may be 0: an empty batch), in the accumulator
// dtype of the layer's dtype (weight_hh's): float32, or float64 for float64 layers.
void check_input(const char* op, const Tensor& u, const Tensor& weight_hh) {
  TORCH_CHECK(u.dim() == 3 && u.size(0) > 0 && u.size(2) > 0 && u.size(2) % 4 == 0, op,
              ": u must be a (T, B, 4H) tensor with T >= 1 and H >= 1, got ", u.sizes());
  TORCH_CHECK(u.scalar_type() == accumulator(weight_hh.scalar_type()), op, ": u has dtype ",
              u.scalar_type(), ", expected ", accumulator(weight_hh.scalar_type()),
              " (the accumulator of the layer's ", weight_hh.scalar_type(), ")");
}

const void* data_or_null(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

// The optional input_stat, gamma_ih and bias of a (T, B, 4H) u that holds x W_ih^T: given
// together (bias may be absent), and only to loops that normalise the input in their steps.
// Contiguous, or undefined where not given.
struct InputNormArgs {
  Tensor stat, gamma_ih, bias;
};

InputNormArgs input_norm_args(const char* op, bool folds_input, const Tensor& u,
                              const Tensor& weight_hh, const std::optional<Tensor>& input_stat,
                              const std::optional<Tensor>& gamma_ih,
                              const std::optional<Tensor>& bias) {
  if (!input_stat) {
    TORCH_CHECK(!gamma_ih && !bias, op, ": gamma_ih and bias come with input_stat");
    return {};
  }
  TORCH_CHECK(folds_input, op, ": input_stat is for the CPU loops; these take u, the input's "
              "contribution (input_stat must be None)");
  TORCH_CHECK(gamma_ih, op, ": input_stat needs gamma_ih");
  const int64_t T = u.size(0), G = u.size(2);
  check_like(op, "input_stat", *input_stat, u, {T, 2, G});
  check_like(op, "gamma_ih", *gamma_ih, weight_hh, {G});
  if (bias) check_like(op, "bias", *bias, weight_hh, {G});
  return {input_stat->contiguous(), gamma_ih->contiguous(),
          bias ? bias->contiguous() : Tensor()};
}

template <ForwardSteps steps, bool folds_input>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> forward_loop(
    const Tensor& u, const Tensor& weight_hh, const Tensor& gamma_hh, const Tensor& gamma_c,
    const Tensor& beta_c, const Tensor& h0, const Tensor& c0, Tensor& mean_hh, Tensor& var_hh,
    Tensor& mean_c, Tensor& var_c, at::IntArrayRef batch_sizes, at::IntArrayRef rows,
    at::ArrayRef<double> factors, const std::optional<Tensor>& factor_values, double eps,
    bool save, const std::optional<Tensor>& input_stat, const std::optional<Tensor>& gamma_ih,
    const std::optional<Tensor>& bias) {
  const char* op = "bnlstm::forward_loop";
  TORCH_CHECK(weight_hh.dim() == 2, op, ": weight_hh must be (4H, H), got ", weight_hh.sizes());
  check_input(op, u, weight_hh);
  const int64_t T = u.size(0), B = u.size(1), G = u.size(2), H = G / 4;
  const int64_t L = mean_hh.dim() == 2 ? mean_hh.size(0) : 0;
  TORCH_CHECK(L >= 1, op, ": mean_hh must be (max_length, 4H), got ", mean_hh.sizes());
  check_weights(op, u, weight_hh, gamma_hh, gamma_c, beta_c);
  check_like(op, "h0", h0, weight_hh, {B, H});
  check_like(op, "c0", c0, weight_hh, {B, H});
  const char* names[] = {"mean_hh", "var_hh", "mean_c", "var_c"};
  Tensor* running[] = {&mean_hh, &var_hh, &mean_c, &var_c};
  for (int s = 0; s < 4; ++s) {  // in the accumulator dtype, as the module keeps them
    check_like(op, names[s], *running[s], u, {L, s < 2 ? G : H});
    TORCH_CHECK(running[s]->is_contiguous(), op, ": ", names[s],
                " must be contiguous (it is updated in place)");
  }
  check_batch_sizes(op, batch_sizes, T, B);
  TORCH_CHECK(static_cast<int64_t>(rows.size()) == T && static_cast<int64_t>(factors.size()) == T,
              op, ": rows and factors must have T = ", T, " entries, got ", rows.size(), " and ",
              factors.size());
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(rows[t] >= 0 && rows[t] < L, op, ": rows[", t, "] = ", rows[t],
                " is outside the running statistics' ", L, " rows");
    TORCH_CHECK(factors[t] <= 1.0, op, ": factors[", t, "] must be at most 1, got ", factors[t]);
    TORCH_CHECK(factors[t] < 0.0 || batch_sizes[t] >= 2, op, ": factors[", t,
                "] asks for batch statistics of ", batch_sizes[t], " row (at least 2 needed)");
  }
  if (factor_values) check_like(op, "factor_values", *factor_values, u, {T});
  TORCH_CHECK(eps >= 0.0, op, ": eps must be non-negative, got ", eps);
  const InputNormArgs in =
      input_norm_args(op, folds_input, u, weight_hh, input_stat, gamma_ih, bias);

  const auto f = u.options();
  const Tensor u_c = u.contiguous(), weight_hh_c = weight_hh.contiguous();
  const Tensor gamma_hh_c = gamma_hh.contiguous();
  const Tensor gamma_c_c = gamma_c.contiguous(), beta_c_c = beta_c.contiguous();
  const Tensor factors_c = factor_values ? factor_values->contiguous() : Tensor();
  Tensor y = reusable_empty({T + 1, B, H}, h0.options()).zero_();  // zero past the lengths
  y[0].copy_(h0);
  Tensor cell = reusable_empty({T + 1, B, H}, f);
  cell[0].copy_(c0);
  Tensor hw = reusable_empty({T, B, G}, f);
  Tensor stat_hh = at::empty({T, 2, G}, f), stat_c = at::empty({T, 2, H}, f);
  // rows that never run (batch_sizes[0] < B) end with their initial state
  Tensor h_n = h0.contiguous().clone(), c_n = c0.contiguous().clone();

  FwdParams p{u_c.data_ptr(), hw.data_ptr(), y.data_ptr(), cell.data_ptr(),
              weight_hh_c.data_ptr(), gamma_hh_c.data_ptr(), gamma_c_c.data_ptr(),
              beta_c_c.data_ptr(), mean_hh.data_ptr(), var_hh.data_ptr(), mean_c.data_ptr(),
              var_c.data_ptr(), stat_hh.data_ptr(), stat_c.data_ptr(), h_n.data_ptr(),
              c_n.data_ptr(), factor_values ? factors_c.data_ptr() : nullptr, B, H, eps, save,
              at::globalContext().allowTF32CuBLAS(), data_or_null(in.stat),
              data_or_null(in.gamma_ih), data_or_null(in.bias)};
  steps(p, y.narrow(0, 1, T), ForwardPlan{batch_sizes, rows, factors});
  return {y, h_n, c_n, cell, hw, stat_hh, stat_c};
}

template <BackwardSteps steps, bool folds_input>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_loop(
    const Tensor& u, const Tensor& hw, const Tensor& cell, const Tensor& weight_hh,
    const Tensor& gamma_hh, const Tensor& gamma_c, const Tensor& beta_c, const Tensor& stat_hh,
    const Tensor& stat_c, const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n,
    at::IntArrayRef batch_sizes, const c10::List<bool>& use_batch,
    const std::optional<Tensor>& input_stat, const std::optional<Tensor>& gamma_ih,
    const std::optional<Tensor>& bias) {
  const char* op = "bnlstm::backward_loop";
  TORCH_CHECK(weight_hh.dim() == 2, op, ": weight_hh must be (4H, H), got ", weight_hh.sizes());
  check_input(op, u, weight_hh);
  const int64_t T = u.size(0), B = u.size(1), G = u.size(2), H = G / 4;
  check_like(op, "hw", hw, u, {T, B, G});
  check_like(op, "cell", cell, u, {T + 1, B, H});
  check_weights(op, u, weight_hh, gamma_hh, gamma_c, beta_c);
  check_like(op, "stat_hh", stat_hh, u, {T, 2, G});
  check_like(op, "stat_c", stat_c, u, {T, 2, H});
  check_like(op, "dy", dy, u, {T, B, H}, false);
  check_like(op, "dh_n", dh_n, u, {B, H}, false);
  check_like(op, "dc_n", dc_n, u, {B, H}, false);
  check_batch_sizes(op, batch_sizes, T, B);
  TORCH_CHECK(static_cast<int64_t>(use_batch.size()) == T, op, ": use_batch must have T = ", T,
              " entries, got ", use_batch.size());
  const InputNormArgs in =
      input_norm_args(op, folds_input, u, weight_hh, input_stat, gamma_ih, bias);

  const auto f = u.options();
  const Tensor u_c = u.contiguous(), hw_c = hw.contiguous(), cell_c = cell.contiguous();
  const Tensor weight_hh_c = weight_hh.contiguous(), gamma_hh_c = gamma_hh.contiguous();
  const Tensor gamma_c_c = gamma_c.contiguous(), beta_c_c = beta_c.contiguous();
  const Tensor stat_hh_c = stat_hh.contiguous(), stat_c_c = stat_c.contiguous();
  const Tensor dy_c = dy.to(weight_hh.scalar_type()).contiguous();
  const Tensor dh_n_c = dh_n.to(u.scalar_type()).contiguous();
  // The loops write every running row of dpre and dpre_hh; the rest is zero (past each
  // sequence's length, and dpre_hh's row T: nothing after the last step). Zeroing only those
  // saves two writes of (T, B, 4H) for a batch of equal lengths. One zero_ per run of steps
  // with the same running rows (at most B runs: on a GPU, as many small launches).
  Tensor dpre = reusable_empty({T, B, G}, f);
  Tensor dpre_hh = reusable_empty({T + 1, B, G}, f);
  dpre_hh[T].zero_();
  for (int64_t t0 = 0, t1 = 0; t0 < T; t0 = t1) {
    const int64_t n = batch_sizes[t0];
    while (t1 < T && batch_sizes[t1] == n) ++t1;
    if (n == B) continue;
    for (Tensor* d : {&dpre, &dpre_hh}) d->narrow(0, t0, t1 - t0).narrow(1, n, B - n).zero_();
  }
  Tensor dh = at::empty({B, H}, f);
  Tensor dc = dc_n.to(u.scalar_type()).contiguous().clone();
  Tensor dsum = at::zeros({T, G}, f), dsum_c = at::zeros({T, 2, H}, f);
  Tensor dsum_ih = reusable_empty({in.stat.defined() ? T : 0, 2, G}, f);  // all written

  BwdParams p{u_c.data_ptr(), hw_c.data_ptr(), cell_c.data_ptr(), weight_hh_c.data_ptr(),
              gamma_hh_c.data_ptr(), gamma_c_c.data_ptr(), beta_c_c.data_ptr(),
              stat_hh_c.data_ptr(), stat_c_c.data_ptr(), dy_c.data_ptr(), dh_n_c.data_ptr(),
              dpre.data_ptr(), dpre_hh.data_ptr(), dh.data_ptr(), dc.data_ptr(),
              dsum.data_ptr(), dsum_c.data_ptr(), B, H, at::globalContext().allowTF32CuBLAS(),
              data_or_null(in.stat), data_or_null(in.gamma_ih), data_or_null(in.bias),
              dsum_ih.data_ptr()};
  steps(p, dy_c, BackwardPlan{batch_sizes, use_batch});

  Tensor dpre_hh_steps = dpre_hh.narrow(0, 0, T);
  Tensor dh0 = at::matmul(dpre_hh_steps[0], weight_hh_c.to(u.scalar_type()));
  const Tensor sums_c = dsum_c.sum(0);
  // dgamma_ih and dbias where the steps did the input norm's backward, else empty
  Tensor dgamma_ih = at::empty({0}, f), dbias = at::empty({0}, f);
  if (in.stat.defined()) {
    const Tensor sums_ih = dsum_ih.sum(0);
    dgamma_ih = sums_ih[0].clone();
    dbias = sums_ih[1].clone();
  }
  // separate outputs must not share storage (torch.library's aliasing rules)
  return {dpre, dpre_hh_steps, dh0, dc, dsum.sum(0), sums_c[0].clone(), sums_c[1].clone(),
          dgamma_ih, dbias};
}

}  // namespace

// The ops' namespace: bnlstm, or in the emulation build (csrc/emulation/) another, so that
// its ops and bnlstm_cuda._C's coexist in one process. TORCH_LIBRARY pastes its argument:
// expand the macro first.
#ifndef BNLSTM_OPS
#define BNLSTM_OPS bnlstm
#endif
#define BNLSTM_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define BNLSTM_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

// Running-statistics buffers are mutated in place (Tensor(a!) ...): functionalization and
// torch.compile see the writes. Per-step host data come as lists: batch_sizes (running rows),
// rows (running-statistics row), factors (weight of the batch statistic; < 0: use the row);
// factor_values, where given, holds those weights on the device (a cumulative average).
BNLSTM_LIBRARY(BNLSTM_OPS, m) {
  m.def(
      "forward_loop(Tensor u, Tensor weight_hh, Tensor gamma_hh, Tensor gamma_c, "
      "Tensor beta_c, Tensor h0, Tensor c0, Tensor(a!) mean_hh, Tensor(b!) var_hh, "
      "Tensor(c!) mean_c, Tensor(d!) var_c, int[] batch_sizes, int[] rows, float[] factors, "
      "Tensor? factor_values, float eps, bool save=True, Tensor? input_stat=None, "
      "Tensor? gamma_ih=None, Tensor? bias=None) -> (Tensor y, Tensor h_n, Tensor c_n, "
      "Tensor cell, Tensor hw, Tensor stat_hh, Tensor stat_c)");
  m.def(
      "backward_loop(Tensor u, Tensor hw, Tensor cell, Tensor weight_hh, Tensor gamma_hh, "
      "Tensor gamma_c, Tensor beta_c, Tensor stat_hh, Tensor stat_c, Tensor dy, Tensor dh_n, "
      "Tensor dc_n, int[] batch_sizes, bool[] use_batch, Tensor? input_stat=None, "
      "Tensor? gamma_ih=None, Tensor? bias=None) -> (Tensor dpre, Tensor dpre_hh, Tensor dh0, "
      "Tensor dc0, Tensor dgamma_hh, Tensor dgamma_c, Tensor dbeta_c, Tensor dgamma_ih, "
      "Tensor dbias)");
#if defined(BNLSTM_WITH_CUDA) || defined(BNLSTM_CUDA_EMULATION)
  // which path the CUDA forward and backward of a layer take on the current device, and why
  m.def("forward_path(ScalarType dtype, int hidden_size) -> str",
        [](c10::ScalarType dtype, int64_t hidden_size) {
          TORCH_CHECK(hidden_size >= 1, "forward_path: hidden_size must be >= 1, got ",
                      hidden_size);
          return forward_path_cuda(dtype, hidden_size);
        });
  m.def("backward_path(ScalarType dtype, int hidden_size) -> str",
        [](c10::ScalarType dtype, int64_t hidden_size) {
          TORCH_CHECK(hidden_size >= 1, "backward_path: hidden_size must be >= 1, got ",
                      hidden_size);
          return backward_path_cuda(dtype, hidden_size);
        });
  // whether the CUDA loops may run persistent (default) or only per step; returns the previous
  m.def("use_persistent(bool on) -> bool", [](bool on) { return use_persistent_cuda(on); });
#endif
}

// CPU tensors: the CPU kernels, or in the emulation build the CUDA loops and kernels
#ifdef BNLSTM_CUDA_EMULATION
constexpr ForwardSteps kCpuForward = forward_steps_cuda;
constexpr BackwardSteps kCpuBackward = backward_steps_cuda;
constexpr bool kCpuFoldsInput = false;
#else
constexpr ForwardSteps kCpuForward = forward_steps_cpu;
constexpr BackwardSteps kCpuBackward = backward_steps_cpu;
constexpr bool kCpuFoldsInput = true;
#endif

BNLSTM_LIBRARY_IMPL(BNLSTM_OPS, CPU, m) {
  m.impl("forward_loop", &forward_loop<kCpuForward, kCpuFoldsInput>);
  m.impl("backward_loop", &backward_loop<kCpuBackward, kCpuFoldsInput>);
}

#ifdef BNLSTM_WITH_CUDA
BNLSTM_LIBRARY_IMPL(BNLSTM_OPS, CUDA, m) {
  m.impl("forward_loop", &forward_loop<forward_steps_cuda, false>);
  m.impl("backward_loop", &backward_loop<backward_steps_cuda, false>);
}
#endif

}  // namespace bnlstm

// `import bnlstm_cuda._C` runs the registrations above; the module itself holds nothing.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
