// The persistent forward: one cooperative launch runs every step of a layer and direction.
// Block x owns hidden units j0 = x * U .. j0 + U - 1 with all 4 gates (4U gate columns) across
// every batch row, so its batch statistics stay inside it, and keeps those columns of W_hh in
// shared memory for the whole loop. Per step:
//   hw = h_{t-1} W_hh^T for its columns (h_{t-1} from y in k tiles through shared memory),
//   stored, with its batch statistics and the running-row update;
//   pre = u + gamma_hh BN(hw); c_t = f c_{t-1} + i g (stored), its statistics;
//   h_t = o tanh(BN(c_t)) stored into y, then one grid barrier: the next step reads every
//   block's h_t.
// The formulas are step_math.h's, as in the per-step kernels (step_fwd.cuh).
#pragma once

#include <cuda/atomic>

#include <algorithm>
#include <tuple>

#include "step_common.cuh"

// A cooperative launch: `cudaLaunchCooperativeKernel` under nvcc, returning its error (a grid
// the device cannot hold is refused, nothing runs); the CPU emulation defines its own.
#ifndef BNLSTM_LAUNCH_COOPERATIVE
#define BNLSTM_LAUNCH_COOPERATIVE(kernel, grid, block, shared, stream, ...) \
  ::bnlstm::launch_cooperative(kernel, grid, block, shared, stream, __VA_ARGS__)
#endif
// The block's dynamic shared memory as bytes (aligned for WMMA's 32-byte operands).
#ifndef BNLSTM_DYNAMIC_SHARED
#define BNLSTM_DYNAMIC_SHARED(name)                            \
  extern __shared__ __align__(128) unsigned char name##_raw[]; \
  unsigned char* const name = name##_raw
#endif

namespace bnlstm {

template <typename... Params, typename... Args>
cudaError_t launch_cooperative(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                               cudaStream_t stream, const Args&... args) {
  std::tuple<Params...> values(args...);  // the kernel's own parameter types, as it reads them
  return std::apply(
      [&](auto&... v) {
        void* pointers[] = {static_cast<void*>(&v)...};
        return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block,
                                           pointers, shared, stream);
      },
      values);
}

// Every thread of every block of the launch waits here until all have arrived. `arrivals`
// starts at 0 for the launch and counts blocks: the k-th barrier completes at k * gridDim.x.
// Release on arrival and acquire on the wait order each block's stores (published to its
// thread 0 by the first __syncthreads) before every other block's later loads.
__device__ __forceinline__ void grid_sync(unsigned* arrivals, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    cuda::atomic_ref<unsigned, cuda::thread_scope_device> count(*arrivals);
    count.fetch_add(1, cuda::memory_order_release);
    while (count.load(cuda::memory_order_acquire) < target) __nanosleep(64);
  }
  __syncthreads();
}

// Per step on the device: running rows n[t] (n[T] = 0), the running-statistics row rows[t] and
// the update weight factors[t] (< 0: normalise with the row; p.factors[t] instead where given).
struct StepTable {
  const int* n;           // [T + 1]
  const int* rows;        // [T]
  const double* factors;  // [T]
};

constexpr int kPersistRowGroups = 4;   // threads per gate column, striding the rows
constexpr int kPersistRowsPerThread = 4;
constexpr int kPersistRows = kPersistRowGroups * kPersistRowsPerThread;  // rows per chunk
constexpr int kPersistMaxThreads = 512;  // U <= 32: 4U columns x kPersistRowGroups

// The block's dynamic shared memory for U units and H inputs (A: the accumulator, S: W_hh's
// dtype, half_width: S is 16-bit, whose products run on tensor cores): offsets in bytes, each
// array 32-byte aligned (WMMA's operands).
struct PersistentLayout {
  size_t tile_h, sums, scratch, gamma_hh, mean_hh, rstd_hh, gamma_c, beta_c, mean_c, rstd_c,
      weight, bytes;
  int k_padded;  // H rounded up to kBlockK: the weight's rows past H are zero

  __host__ __device__ PersistentLayout(int64_t H, int U, size_t acc, size_t s, bool half_width) {
    const int cols = 4 * U, threads = cols * kPersistRowGroups;
    k_padded = static_cast<int>((H + kBlockK - 1) / kBlockK * kBlockK);
    size_t at = 0;
    auto take = [&](size_t bytes) {
      const size_t here = (at + 31) / 32 * 32;
      at = here + bytes;
      return here;
    };
    // h's k-slice: in A on FFMA, in S on tensor cores; then the two k halves' float sums
    tile_h = take(half_width ? kPersistRows * (kBlockK + kMmaPad) * s
                             : kPersistRows * (kBlockK + 1) * acc);
    sums = take(half_width ? 2 * kPersistRows * (cols + kMmaAccPad) * sizeof(float) : 0);
    scratch = take(threads * acc);
    gamma_hh = take(cols * acc);
    mean_hh = take(cols * acc);
    rstd_hh = take(cols * acc);
    gamma_c = take(U * acc);
    beta_c = take(U * acc);
    mean_c = take(U * acc);
    rstd_c = take(U * acc);
    weight = take(0);
    bytes = weight + size_t(k_padded) * cols * s;
  }
};

// hw[r] = sum_k h[b, k] W[k, cc] for the calling thread's rows b = b0 + rg + r *
// kPersistRowGroups of the chunk (rows >= n read as 0), W the block's slice in shared memory
// ([k_padded][cols], k-major). On tensor cores the U / 2 warps split into cols / 16 output tiles
// x 2 halves of each k step, whose float sums are added in shared memory; on FFMA each thread
// sums its column's rows.
template <typename S, typename A>
__device__ void chunk_product(const S* h, int64_t H, int n, int b0, const S* weight, int cols,
                              const PersistentLayout& layout, unsigned char* smem,
                              A (&hw)[kPersistRowsPerThread]) {
  const int tid = threadIdx.x, threads = cols * kPersistRowGroups, rg = tid / cols,
            cc = tid % cols;
  if constexpr (kTensorCores<S>) {
    static_assert(kPersistRows == 16, "a chunk's rows are one WMMA tile's");
    constexpr int ld = kBlockK + kMmaPad;
    S* tile = reinterpret_cast<S*>(smem + layout.tile_h);  // [kPersistRows][ld]
    float* sums = reinterpret_cast<float*>(smem + layout.sums);  // [2][kPersistRows][cols + pad]
    const int tiles = cols / 16, warp = tid / 32, col16 = warp % tiles * 16,
              k16 = warp / tiles * 16;
    WarpMma<S> mma;
    mma.zero();
    for (int k0 = 0; k0 < layout.k_padded; k0 += kBlockK) {
      __syncthreads();  // every warp has read the previous tile (and the weights are in)
      for (int idx = tid; idx < kPersistRows * kBlockK; idx += threads) {
        const int rr = idx / kBlockK, kk = idx % kBlockK;  // k fastest: h's rows
        const int64_t b = b0 + rr, k = k0 + kk;
        store(tile + rr * ld + kk, (b < n && k < H) ? to_acc(h[b * H + k]) : 0.0f);
      }
      __syncthreads();
      mma.add(tile + k16, ld, weight + (k0 + k16) * cols + col16, cols);
    }
    const int ld_acc = cols + kMmaAccPad;
    mma.store(sums + (k16 / 16) * kPersistRows * ld_acc + col16, ld_acc);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kPersistRowsPerThread; ++r) {
      const int rr = rg + r * kPersistRowGroups;
      hw[r] = sums[rr * ld_acc + cc] + sums[(kPersistRows + rr) * ld_acc + cc];
    }
  } else {
    A* tile = reinterpret_cast<A*>(smem + layout.tile_h);  // [kPersistRows][kBlockK + 1]
#pragma unroll
    for (int r = 0; r < kPersistRowsPerThread; ++r) hw[r] = A(0);
    for (int k0 = 0; k0 < layout.k_padded; k0 += kBlockK) {
      __syncthreads();  // every thread has read the previous tile (and the weights are in)
      for (int idx = tid; idx < kPersistRows * kBlockK; idx += threads) {
        const int rr = idx / kBlockK, kk = idx % kBlockK;  // k fastest: h's rows
        const int64_t b = b0 + rr, k = k0 + kk;
        tile[rr * (kBlockK + 1) + kk] = (b < n && k < H) ? to_acc(h[b * H + k]) : A(0);
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kBlockK; ++kk) {
        const A w = to_acc(weight[(k0 + kk) * cols + cc]);
#pragma unroll
        for (int r = 0; r < kPersistRowsPerThread; ++r) {
          hw[r] += tile[(rg + r * kPersistRowGroups) * (kBlockK + 1) + kk] * w;
        }
      }
    }
  }
}

// Threads (rg, cc) = (tid / 4U, tid % 4U) own gate column cc (gate cc / U, unit cc % U) and the
// rows rg, rg + kPersistRowGroups, ... for the product and its statistics; threads
// (er, eu) = (tid / U, tid % U) own unit eu and the rows er, er + 4 kPersistRowGroups, ... for
// the gates and the cell.
template <typename S>
__global__ void __launch_bounds__(kPersistMaxThreads, 1)
persistent_fwd_kernel(FwdParams p, StepTable steps, int T, int U, unsigned* arrivals) {
  using A = typename AccType<S>::type;
  BNLSTM_DYNAMIC_SHARED(smem);
  const int64_t H = p.H, G = 4 * H, B = p.B;
  const PersistentLayout layout(H, U, sizeof(A), sizeof(S), kHalfWidth<S>);
  A* scratch = reinterpret_cast<A*>(smem + layout.scratch);
  A* gamma_hh = reinterpret_cast<A*>(smem + layout.gamma_hh);  // [4U]
  A* mean_hh = reinterpret_cast<A*>(smem + layout.mean_hh);
  A* rstd_hh = reinterpret_cast<A*>(smem + layout.rstd_hh);
  A* gamma_c = reinterpret_cast<A*>(smem + layout.gamma_c);  // [U]
  A* beta_c = reinterpret_cast<A*>(smem + layout.beta_c);
  A* mean_c = reinterpret_cast<A*>(smem + layout.mean_c);
  A* rstd_c = reinterpret_cast<A*>(smem + layout.rstd_c);
  // [k_padded][4U]: k-major, so a warp's consecutive columns read consecutive words
  S* weight = reinterpret_cast<S*>(smem + layout.weight);

  const int cols = 4 * U, threads = cols * kPersistRowGroups, tid = threadIdx.x;
  const int rg = tid / cols, cc = tid % cols, er = tid / U, eu = tid % U;
  const int row_groups_e = threads / U;
  const int64_t j0 = int64_t(blockIdx.x) * U;
  const int64_t j = j0 + cc % U, c = (cc / U) * H + j;  // product layout: unit and gate column
  const int64_t je = j0 + eu;                             // elementwise layout: unit
  const bool j_ok = j < H, je_ok = je < H;
  const A eps = A(p.eps);

  const S* weight_hh = static_cast<const S*>(p.weight_hh);
  for (int64_t idx = tid; idx < int64_t(layout.k_padded) * cols; idx += threads) {
    const int64_t k = idx % layout.k_padded, col = idx / layout.k_padded;  // k fastest: W's rows
    const int64_t unit = j0 + col % U;
    if (k < H && unit < H) {
      weight[k * cols + col] = weight_hh[((col / U) * H + unit) * H + k];
    } else {
      store(weight + k * cols + col, A(0));
    }
  }
  if (tid < cols) {
    gamma_hh[tid] = j_ok ? to_acc(static_cast<const S*>(p.gamma_hh)[c]) : A(0);
  }
  if (tid < U && je_ok) {
    gamma_c[eu] = to_acc(static_cast<const S*>(p.gamma_c)[je]);
    beta_c[eu] = to_acc(static_cast<const S*>(p.beta_c)[je]);
  }

  for (int t = 0; t < T; ++t) {
    const int n = steps.n[t], n_next = steps.n[t + 1], row = steps.rows[t];
    const bool use_batch = steps.factors[t] >= 0;
    const A factor = p.factors ? static_cast<const A*>(p.factors)[t] : A(steps.factors[t]);
    const A* u_t = static_cast<const A*>(p.u) + t * B * G;
    A* hw_t = static_cast<A*>(p.hw) + t * B * G;
    const S* h_prev = static_cast<const S*>(p.y) + t * B * H;
    S* h_next = static_cast<S*>(p.y) + (t + 1) * B * H;
    const A* c_prev = static_cast<const A*>(p.cell) + t * B * H;
    A* c_next = static_cast<A*>(p.cell) + (t + 1) * B * H;

    A sum_h = A(0);
    for (int b0 = 0; b0 < n; b0 += kPersistRows) {
      A hw[kPersistRowsPerThread];
      chunk_product<S>(h_prev, H, n, b0, weight, cols, layout, smem, hw);
#pragma unroll
      for (int r = 0; r < kPersistRowsPerThread; ++r) {
        const int64_t b = b0 + rg + r * kPersistRowGroups;
        if (b < n && j_ok) {
          hw_t[b * G + c] = hw[r];
          sum_h += hw[r];
        }
      }
    }
    A hh_mean, hh_rstd;
    column_statistics(sum_h, hw_t + c, G, rg, kPersistRowGroups, n, j_ok, use_batch, factor, eps,
                      static_cast<A*>(p.run_mean_hh) + row * G + c,
                      static_cast<A*>(p.run_var_hh) + row * G + c, j_ok && rg == 0, scratch,
                      cols, kPersistRowGroups, hh_mean, hh_rstd);
    if (j_ok && rg == 0) {
      A* stat = static_cast<A*>(p.stat_hh) + t * 2 * G;
      stat[c] = hh_mean;
      stat[G + c] = hh_rstd;
      mean_hh[cc] = hh_mean;
      rstd_hh[cc] = hh_rstd;
    }
    __syncthreads();  // the gate statistics, and hw stored by the product layout's threads

    // gate g of row b and this thread's unit: u + gamma_hh BN(hw)
    auto pre = [&](int64_t b, int g) {
      const int64_t at = b * G + g * H + je;
      const int k = g * U + eu;
      return recurrent_preactivation(u_t[at], hw_t[at], mean_hh[k], rstd_hh[k], gamma_hh[k]);
    };
    A sum_c = A(0);
    for (int64_t b = er; b < n && je_ok; b += row_groups_e) {
      const A cell = cell_update(sigmoid(pre(b, 0)), sigmoid(pre(b, 1)), tanh_(pre(b, 2)),
                                 c_prev[b * H + je]);
      c_next[b * H + je] = cell;
      sum_c += cell;
    }
    A c_mean, c_rstd;
    column_statistics(sum_c, c_next + je, H, er, row_groups_e, n, je_ok, use_batch, factor, eps,
                      static_cast<A*>(p.run_mean_c) + row * H + je,
                      static_cast<A*>(p.run_var_c) + row * H + je, je_ok && er == 0, scratch, U,
                      row_groups_e, c_mean, c_rstd);
    if (je_ok && er == 0) {
      A* stat = static_cast<A*>(p.stat_c) + t * 2 * H;
      stat[je] = c_mean;
      stat[H + je] = c_rstd;
      mean_c[eu] = c_mean;
      rstd_c[eu] = c_rstd;
    }
    __syncthreads();  // the cell statistics

    for (int64_t b = er; b < n && je_ok; b += row_groups_e) {
      const A cell = c_next[b * H + je];
      const A h = sigmoid(pre(b, 3)) *
                  tanh_(cell_norm(cell, mean_c[eu], rstd_c[eu], gamma_c[eu], beta_c[eu]));
      store(h_next + b * H + je, h);
      if (b >= n_next) {  // row b ends at this step
        store(static_cast<S*>(p.h_n) + b * H + je, h);
        store(static_cast<S*>(p.c_n) + b * H + je, cell);
      }
    }
    grid_sync(arrivals, unsigned(t + 1) * gridDim.x);  // h_t of every block, for step t + 1
  }
}

// Hidden units per block the persistent forward may take: 4U gate columns x kPersistRowGroups
// threads (128 to 512).
constexpr int kPersistUnits[] = {8, 16, 32};

#define BNLSTM_TRY(expr)                            \
  do {                                              \
    const cudaError_t bnlstm_status_ = (expr);      \
    if (bnlstm_status_ != cudaSuccess) return bnlstm_status_; \
  } while (0)

template <typename S>
cudaError_t plan_persistent_fwd(int64_t H, PersistentPlan& plan) {
  using A = typename AccType<S>::type;
  plan = PersistentPlan{};
  int device = 0, sms = 0, cooperative = 0, shared_max = 0;
  BNLSTM_TRY(cudaGetDevice(&device));
  BNLSTM_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  BNLSTM_TRY(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  BNLSTM_TRY(cudaDeviceGetAttribute(&shared_max, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                    device));
  if (!cooperative) {
    plan.why = "the device has no cooperative launch";
    return cudaSuccess;
  }
  // The smallest U whose grid fits one block per SM fills the most SMs; else the smallest U
  // whose grid the SMs hold at once.
  for (const bool one_per_sm : {true, false}) {
    for (const int U : kPersistUnits) {
      const size_t bytes = PersistentLayout(H, U, sizeof(A), sizeof(S), kHalfWidth<S>).bytes;
      const int blocks = static_cast<int>((H + U - 1) / U), threads = 4 * U * kPersistRowGroups;
      if (bytes > size_t(shared_max)) continue;
      BNLSTM_TRY(cudaFuncSetAttribute(reinterpret_cast<const void*>(persistent_fwd_kernel<S>),
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
      int per_sm = 0;
      BNLSTM_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &per_sm, reinterpret_cast<const void*>(persistent_fwd_kernel<S>), threads, bytes));
      if (blocks <= (one_per_sm ? std::min(per_sm, 1) : per_sm) * sms) {
        plan.persistent = true;
        plan.units = U;
        plan.blocks = blocks;
        plan.threads = threads;
        plan.shared_bytes = bytes;
        return cudaSuccess;
      }
    }
  }
  // the smallest U takes the least shared memory
  const size_t bytes =
      PersistentLayout(H, kPersistUnits[0], sizeof(A), sizeof(S), kHalfWidth<S>).bytes;
  plan.why = bytes > size_t(shared_max)
                 ? "W_hh's slice does not fit the shared memory of a block"
                 : "the grid is larger than the blocks the SMs hold at once";
  return cudaSuccess;
}

#undef BNLSTM_TRY

template <typename S>
cudaError_t launch_persistent_fwd(const FwdParams& p, const PersistentPlan& plan, const int* n,
                                  const int* rows, const double* factors, int T,
                                  unsigned* arrivals, cudaStream_t stream) {
  return BNLSTM_LAUNCH_COOPERATIVE(persistent_fwd_kernel<S>, dim3(plan.blocks),
                                   dim3(plan.threads), plan.shared_bytes, stream, p,
                                   StepTable{n, rows, factors}, T, plan.units, arrivals);
}

}  // namespace bnlstm
