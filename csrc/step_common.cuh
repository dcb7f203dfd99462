// Device helpers both step kernels share: dtype conversion, the tiled recurrent product and
// per-feature batch sums (the per-element formulas are step_math.h's).
//
// Thread layout of a block: thread (rg, col) = (threadIdx.x / kBlockH, threadIdx.x % kBlockH)
// owns hidden unit j = blockIdx.x * kBlockH + col and the rows b = rg, rg + kRowGroups, ...;
// a block therefore owns its hidden units across every running row, so every batch statistic
// is reduced inside one block and the launch boundary is the only barrier between steps.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "bnlstm.h"
#include "step_math.h"

// A kernel launch: `<<<>>>` under nvcc; the CPU emulation (csrc/emulation/) defines its own.
#ifndef BNLSTM_LAUNCH
#define BNLSTM_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<grid, block, 0, stream>>>(__VA_ARGS__)
#endif

namespace bnlstm {

template <typename S> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(double* p, double x) { *p = x; }
__device__ __forceinline__ void store(__half* p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

// out[r] = sum_k a[b, k] * w[k, col0 + col] for this thread's rows b = b0 + rg + r * kRowGroups;
// rows >= a_rows and columns >= n_cols read as 0. w is read through its strides, so W_hh serves
// as [H, G] (forward, one gate's rows) and as [G, H] (backward). Accumulates in A.
template <typename TA, typename TW, typename A>
__device__ void tile_matmul(const TA* a, int64_t a_stride, int a_rows, int b0, int64_t K,
                            const TW* w, int64_t w_k_stride, int64_t w_n_stride, int64_t col0,
                            int64_t n_cols, A (&out)[kRowsPerThread],
                            A (*tile_a)[kBlockK + 1], A (*tile_w)[kBlockH + 1]) {
  const int tid = threadIdx.x, rg = tid / kBlockH, col = tid % kBlockH;
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) out[r] = A(0);
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    __syncthreads();  // every thread has read the previous tiles
    for (int idx = tid; idx < kBlockB * kBlockK; idx += kThreads) {
      const int rr = idx / kBlockK, kk = idx % kBlockK;  // k fastest: rows are contiguous
      const int64_t b = b0 + rr, k = k0 + kk;
      tile_a[rr][kk] = (b < a_rows && k < K) ? to_acc(a[b * a_stride + k]) : A(0);
    }
    for (int idx = tid; idx < kBlockK * kBlockH; idx += kThreads) {
      // walk the contiguous direction of w fastest
      const int kk = w_k_stride == 1 ? idx % kBlockK : idx / kBlockH;
      const int cc = w_k_stride == 1 ? idx / kBlockK : idx % kBlockH;
      const int64_t k = k0 + kk, c = col0 + cc;
      tile_w[kk][cc] = (k < K && c < n_cols) ? to_acc(w[k * w_k_stride + c * w_n_stride]) : A(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kBlockK; ++kk) {
      const A wv = tile_w[kk][col];
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) out[r] += tile_a[rg + r * kRowGroups][kk] * wv;
    }
  }
}

// Sum over the block's row groups of each thread's partial v, thread (tid / cols, tid % cols)
// holding column tid % cols; every thread of a column gets the same total (fixed order:
// deterministic). `scratch` holds cols x groups values.
template <typename A>
__device__ A column_sum(A v, A* scratch, int cols = kBlockH, int groups = kRowGroups) {
  __syncthreads();  // every thread has read the previous sum
  scratch[threadIdx.x] = v;
  __syncthreads();
  const int col = threadIdx.x % cols;
  A total = A(0);
  for (int r = 0; r < groups; ++r) total += scratch[r * cols + col];
  return total;
}

// Mean and 1/std of this thread's feature at the step, from its partial sum over its rows: the
// block-wide sum (column_sum), then with batch statistics the centred squares of the values
// this thread stored itself, z[b * ld] for b = first, first + stride, ... < n (two-pass; the
// same rows, so no barrier), and step_statistics (the writer moves the running row). Every
// thread of the block calls it (it holds barriers); z is read and mean, rstd set only where ok.
template <typename A>
__device__ void column_statistics(A sum, const A* z, int64_t ld, int64_t first, int64_t stride,
                                  int64_t n, bool ok, bool use_batch, A factor, A eps,
                                  A* run_mean, A* run_var, bool writer, A* scratch, int cols,
                                  int groups, A& mean, A& rstd) {
  sum = column_sum(sum, scratch, cols, groups);
  A sq = A(0);
  if (use_batch) {
    for (int64_t b = first; b < n && ok; b += stride) {
      const A d = z[b * ld] - sum / A(n);
      sq += d * d;
    }
    sq = column_sum(sq, scratch, cols, groups);
  }
  if (ok) {
    step_statistics(sum, sq, n, use_batch, factor, eps, run_mean, run_var, writer, mean, rstd);
  }
}

// Per-feature constants of the block's hidden units at this step, in shared memory.
template <typename A>
struct StepConstants {
  A gamma_hh[4][kBlockH], mean_hh[4][kBlockH], rstd_hh[4][kBlockH];
  A gamma_c[kBlockH], beta_c[kBlockH], mean_c[kBlockH], rstd_c[kBlockH];
};

// Loads the learnable per-feature constants of column col (hidden unit j) into k.
template <typename S, typename A>
__device__ void load_gammas(StepConstants<A>& k, const S* gamma_hh, const S* gamma_c,
                            const S* beta_c, int64_t H, int64_t j, int col) {
#pragma unroll
  for (int g = 0; g < 4; ++g) k.gamma_hh[g][col] = to_acc(gamma_hh[g * H + j]);
  k.gamma_c[col] = to_acc(gamma_c[j]);
  k.beta_c[col] = to_acc(beta_c[j]);
}

// Pre-activation of gate g, row b, hidden unit j: u + gamma_hh BN(hw).
template <typename A>
__device__ __forceinline__ A gate_preactivation(const StepConstants<A>& k, const A* u_t,
                                                const A* hw_t, int64_t G, int64_t H, int64_t b,
                                                int g, int64_t j, int col) {
  const int64_t at = b * G + g * H + j;
  return recurrent_preactivation(u_t[at], hw_t[at], k.mean_hh[g][col], k.rstd_hh[g][col],
                                 k.gamma_hh[g][col]);
}

}  // namespace bnlstm
