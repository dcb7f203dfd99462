// The per-element formulas of a BN-LSTM step, once for every C++ kernel: the CUDA kernels
// (step_*.cuh, __host__ __device__ under nvcc) and the CPU kernels (loops_cpu.cpp, plain inline
// under the host compiler). A is the accumulator type (float, or double for float64 layers).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define BNLSTM_HD __host__ __device__ __forceinline__
#else
#define BNLSTM_HD inline
#endif

namespace bnlstm {

BNLSTM_HD float abs_(float x) { return fabsf(x); }
BNLSTM_HD double abs_(double x) { return fabs(x); }
BNLSTM_HD float sqrt_(float x) { return sqrtf(x); }
BNLSTM_HD double sqrt_(double x) { return sqrt(x); }
BNLSTM_HD double exp_(double x) { return exp(x); }
BNLSTM_HD double tanh_(double x) { return tanh(x); }

template <typename A>
struct TanhSech2 {
  A tanh, sech2;  // tanh(x) and its derivative 1 - tanh(x)^2
};

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
#else
// exp on the host in plain float arithmetic, so loops over features vectorise (libm's expf is a
// call per element): Cody-Waite reduction by ln 2 and Cephes' degree-5 polynomial, within 2 ulp.
// NaN stays NaN; the clamp keeps 2^k a normal float (exp(88.3) = 2.1e38).
inline float exp_(float x) {
  x = x > 88.3f ? 88.3f : x;
  x = x < -87.3f ? -87.3f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float k = (x * 1.44269504088896341f + magic) - magic;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// tanh through the exp above, with sech^2 = 1 - tanh^2 from the same exp and one division:
// e = exp(-2|x|) and r = 1 / (1 + e) give tanh|x| = (1 - e) r and sech^2 = 4 e r^2 (no
// cancellation where tanh saturates). For |x| < 1/4, where 1 - e cancels, tanh is its odd
// Taylor polynomial to x^9 (next term below 1e-8 relative). Both are computed and one is
// selected, so the loop stays vectorised; a caller that wants tanh alone loses the rest to
// dead-code elimination.
inline TanhSech2<float> tanh_sech2(float x) {
  const float e = exp_(-2.0f * fabsf(x));
  const float r = 1.0f / (1.0f + e);
  const float t = (1.0f - e) * r;
  const float x2 = x * x;
  const float taylor =
      x * (1.0f + x2 * (-0.333333333f +
                        x2 * (0.133333333f + x2 * (-0.0539682540f + x2 * 0.0218694885f))));
  return {fabsf(x) < 0.25f ? taylor : (x < 0.0f ? -t : t), 4.0f * e * r * r};
}

inline float tanh_(float x) { return tanh_sech2(x).tanh; }
#endif

template <typename A>
BNLSTM_HD A sigmoid(A x) { return A(1) / (A(1) + exp_(-x)); }

// 1 - tanh(x)^2 as 4e / (1 + e)^2 with e = exp(-2|x|): no cancellation where tanh saturates.
template <typename A>
BNLSTM_HD A sech2(A x) {
  const A e = exp_(A(-2) * abs_(x));
  return A(4) * e / ((A(1) + e) * (A(1) + e));
}

// tanh(x) and 1 - tanh(x)^2 together; host float32 shares one exp between them (above).
template <typename A>
BNLSTM_HD TanhSech2<A> tanh_sech2(A x) { return {tanh_(x), sech2(x)}; }

// Derivative of the sigmoid from its value s.
template <typename A>
BNLSTM_HD A dsigmoid(A s) { return s * (A(1) - s); }

// Mean and 1/std of one feature at a step. With batch statistics (use_batch): from the sum
// and the centred sum of squares over the n running rows (two-pass), and the writer moves the
// running row by `factor` towards them (the running variance is the unbiased one, BatchNorm's
// convention); otherwise the running row as it is.
template <typename A>
BNLSTM_HD void step_statistics(A total, A centred, int64_t n, bool use_batch, A factor, A eps,
                               A* run_mean, A* run_var, bool writer, A& mean, A& rstd) {
  A var;
  if (use_batch) {
    mean = total / A(n);
    var = centred / A(n);
    if (writer) {
      *run_mean = *run_mean + factor * (mean - *run_mean);
      *run_var = *run_var + factor * (var * A(n) / A(n - 1) - *run_var);
    }
  } else {
    mean = *run_mean;
    var = *run_var;
  }
  rstd = A(1) / sqrt_(var + eps);
}

// The input's contribution to one gate feature, u = gamma_ih BN(x W_ih^T) + bias, from x W_ih^T,
// the step's mean, scale = gamma_ih rstd, and shift = bias.
template <typename A>
BNLSTM_HD A input_contribution(A xw, A mean, A scale, A shift) {
  return (xw - mean) * scale + shift;
}

// Pre-activation of one gate feature: the input's contribution u plus gamma_hh BN(h W_hh^T).
template <typename A>
BNLSTM_HD A recurrent_preactivation(A u, A hw, A mean_hh, A rstd_hh, A gamma_hh) {
  return u + gamma_hh * ((hw - mean_hh) * rstd_hh);
}

// c_t from the activated gates i, f, g and c_{t-1}.
template <typename A>
BNLSTM_HD A cell_update(A i, A f, A g, A c_prev) { return f * c_prev + i * g; }

// BN(c_t): the normalised cell, scaled and shifted; h_t = o tanh(cell_norm(...)).
template <typename A>
BNLSTM_HD A cell_norm(A c, A mean_c, A rstd_c, A gamma_c, A beta_c) {
  return gamma_c * ((c - mean_c) * rstd_c) + beta_c;
}

// Gradient through (z - mean) * rstd given d = dL/dxhat; with batch statistics the mean and
// variance depend on every row (mean_d, mean_dx: batch means of d and d * xhat over the running
// rows; a loop over rows computes them once per feature, not a division per element).
template <typename A>
BNLSTM_HD A bn_backward_means(A d, A xhat, A rstd, A mean_d, A mean_dx, bool use_batch) {
  return use_batch ? rstd * (d - mean_d - xhat * mean_dx) : rstd * d;
}

// The same from the batch sums over the n rows (n comes as an A, so no integer conversion sits
// in a vectorised loop).
template <typename A>
BNLSTM_HD A bn_backward(A d, A xhat, A rstd, A sum_d, A sum_dx, A n, bool use_batch) {
  return use_batch ? bn_backward_means(d, xhat, rstd, sum_d / n, sum_dx / n, true) : rstd * d;
}

}  // namespace bnlstm
