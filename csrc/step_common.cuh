// Device helpers the CUDA kernels (persistent_fwd.cuh, persistent_bwd.cuh) share: dtype
// conversion, a warp's tensor-core product, per-feature batch sums and statistics, and the
// backward's per-step rows (the per-element formulas are step_math.h's).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>  // empty under the host compiler: the emulation defines nvcuda::wmma

#include <type_traits>

#include "bnlstm.h"
#include "step_math.h"

// A kernel launch with `shared` bytes of dynamic shared memory: `<<<>>>` under nvcc; the CPU
// emulation (csrc/emulation/) defines its own.
#ifndef BNLSTM_LAUNCH
#define BNLSTM_LAUNCH(kernel, grid, block, shared, stream, ...) \
  kernel<<<grid, block, shared, stream>>>(__VA_ARGS__)
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

// Whether a layer of dtype S multiplies on tensor cores: WMMA with float sums, m16n16k16 for the
// 16-bit dtypes and m16n16k8 TF32 for float (sm_80 on: bf16 and TF32 need it); double stays on
// DFMA, as it is the check. kMmaDtype: the dtypes that may, the same on host and device (shared
// memory layouts are planned on the host).
template <typename S>
constexpr bool kHalfWidth = std::is_same_v<S, __half> || std::is_same_v<S, __nv_bfloat16>;
template <typename S> constexpr bool kMmaDtype = kHalfWidth<S> || std::is_same_v<S, float>;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
template <typename S> constexpr bool kTensorCores = false;
#else
template <typename S> constexpr bool kTensorCores = kMmaDtype<S>;
#endif
constexpr int kMmaPad = 8;  // elements past an operand tile's row: keeps 32-byte fragments aligned
constexpr int kMmaAccPad = 4;

// One warp's 16 x 16 tile of a product on tensor cores, summed in float over 16-deep slices of
// operands in shared memory: a (16 x 16, row-major, leading dimension lda) times w (16 x 16,
// k x columns, row-major). `tf32` is float's alone (see the specialisation).
template <typename S>
struct WarpMma {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc;

  __device__ explicit WarpMma(bool /*tf32*/) {}
  __device__ void zero() { nvcuda::wmma::fill_fragment(acc, 0.0f); }

  __device__ void add(const S* a, unsigned lda, const S* w, unsigned ldw) {
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, S, nvcuda::wmma::row_major> fa;
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, S, nvcuda::wmma::row_major> fb;
    nvcuda::wmma::load_matrix_sync(fa, a, lda);
    nvcuda::wmma::load_matrix_sync(fb, w, ldw);
    nvcuda::wmma::mma_sync(acc, fa, fb, acc);
  }

  __device__ void store(float* out, unsigned ld) const {
    nvcuda::wmma::store_matrix_sync(out, acc, ld, nvcuda::wmma::mem_row_major);
  }
};

// float on TF32 tensor cores, two k8 steps per 16-deep slice. With tf32 (PyTorch's
// torch.backends.cuda.matmul.allow_tf32, as its float32 matmuls) each operand is rounded to TF32
// (10 mantissa bits) and multiplied once; without, as tf32x3 (the Triton kernels' default): each
// operand is split into a TF32 part and the TF32 rounding of its remainder, and the three
// products other than remainder x remainder are summed, smallest first: about float32's accuracy.
// (TF32 fragments exist from sm_80 on; below it float stays on FFMA.)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <>
struct WarpMma<float> {
  template <typename Use>
  using Tf32 = nvcuda::wmma::fragment<Use, 16, 16, 8, nvcuda::wmma::precision::tf32,
                                      nvcuda::wmma::row_major>;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float> acc;
  bool tf32;

  __device__ explicit WarpMma(bool tf32_) : tf32(tf32_) {}
  __device__ void zero() { nvcuda::wmma::fill_fragment(acc, 0.0f); }

  // Element by element (the same map for every element, so the fragment's unspecified layout
  // does not matter): f = TF32(f); split also sets small = TF32(f - TF32(f)).
  template <typename Frag>
  __device__ static void round(Frag& f) {
#pragma unroll
    for (int e = 0; e < f.num_elements; ++e) f.x[e] = nvcuda::wmma::__float_to_tf32(f.x[e]);
  }
  template <typename Frag>
  __device__ static void split(Frag& big, Frag& small) {
#pragma unroll
    for (int e = 0; e < big.num_elements; ++e) {
      const float v = big.x[e], hi = nvcuda::wmma::__float_to_tf32(v);
      big.x[e] = hi;
      small.x[e] = nvcuda::wmma::__float_to_tf32(v - hi);
    }
  }

  __device__ void add(const float* a, unsigned lda, const float* w, unsigned ldw) {
#pragma unroll
    for (int k8 = 0; k8 < 16; k8 += 8) {
      Tf32<nvcuda::wmma::matrix_a> fa, fa_small;
      Tf32<nvcuda::wmma::matrix_b> fb, fb_small;
      nvcuda::wmma::load_matrix_sync(fa, a + k8, lda);
      nvcuda::wmma::load_matrix_sync(fb, w + k8 * ldw, ldw);
      if (tf32) {
        round(fa);
        round(fb);
      } else {
        split(fa, fa_small);
        split(fb, fb_small);
        nvcuda::wmma::mma_sync(acc, fa_small, fb, acc);
        nvcuda::wmma::mma_sync(acc, fa, fb_small, acc);
      }
      nvcuda::wmma::mma_sync(acc, fa, fb, acc);
    }
  }

  __device__ void store(float* out, unsigned ld) const {
    nvcuda::wmma::store_matrix_sync(out, acc, ld, nvcuda::wmma::mem_row_major);
  }
};
#endif

// Sum over the block's row groups of each thread's partial v, thread (tid / cols, tid % cols)
// holding column tid % cols; every thread of a column gets the same total (fixed order:
// deterministic). `scratch` holds cols x groups values.
template <typename A>
__device__ A column_sum(A v, A* scratch, int cols, int groups) {
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

// Step t's rows of the backward's buffers, as the per-step and the persistent backward read
// and write them.
template <typename S, typename A>
struct BwdStepRows {
  const A *u_t, *hw_t, *c_prev, *c_t, *stat_hh_t, *stat_c_t;
  const S* dy_t;
  A *dpre_t, *dpre_hh_t;
  const A* dpre_hh_next;  // row t + 1, written by the step before in the reverse loop
  A *dsum_t, *dsum_c_t;

  __device__ BwdStepRows(const BwdParams& p, int t) {
    const int64_t H = p.H, G = 4 * H, B = p.B;
    u_t = static_cast<const A*>(p.u) + t * B * G;
    hw_t = static_cast<const A*>(p.hw) + t * B * G;
    c_prev = static_cast<const A*>(p.cell) + t * B * H;
    c_t = c_prev + B * H;
    stat_hh_t = static_cast<const A*>(p.stat_hh) + t * 2 * G;
    stat_c_t = static_cast<const A*>(p.stat_c) + t * 2 * H;
    dy_t = static_cast<const S*>(p.dy) + t * B * H;
    dpre_t = static_cast<A*>(p.dpre) + t * B * G;
    dpre_hh_t = static_cast<A*>(p.dpre_hh) + t * B * G;
    dpre_hh_next = dpre_hh_t + B * G;
    dsum_t = static_cast<A*>(p.dsum) + t * G;
    dsum_c_t = static_cast<A*>(p.dsum_c) + t * 2 * H;
  }
};

}  // namespace bnlstm
