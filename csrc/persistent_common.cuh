// What the persistent kernels (persistent_fwd.cuh, persistent_bwd.cuh) share: the cooperative
// launch, the grid barrier, the block's dynamic shared memory, the chunked product against the
// block's slice of W_hh held in shared memory (tensor cores for 16-bit layers), and the plan
// that picks the units per block.
//
// A persistent block owns U hidden units (all 4 gates) across every batch row, so every batch
// statistic stays inside it, for every step of a layer and direction; 16U threads. One grid
// barrier per step lets the next step read what every block wrote.
#pragma once

#include <cuda/atomic>

#include <algorithm>
#include <tuple>
#include <type_traits>

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

constexpr int kPersistRows = 16;             // rows per chunk of the product: one WMMA tile's
constexpr int kPersistThreadsPerUnit = 16;   // 16U threads per block
constexpr int kPersistMaxThreads = 512;      // U <= 32
constexpr int kPersistUnits[] = {8, 16, 32};  // units per block a persistent plan may take
constexpr int kStepUnits[] = {4, 8, 16, 32};  // and a per-step plan (narrower: more blocks)
constexpr int kPersistStagedBytes = 8192;     // of a chunk's rows per round of the product
constexpr int kFfmaStep = 32;                 // inputs per step of the FFMA product

// The block's dynamic shared memory, offsets in bytes, each array 32-byte aligned (WMMA's
// operands): the product's staged rows, its partial sums (tensor cores), the column-sum
// scratch, the units' constants (16U values: gamma_hh, mean_hh, rstd_hh of the 4U gate columns,
// gamma_c, beta_c, mean_c, rstd_c of the U units), then the block's slice of W_hh,
// [k_padded][cols] in S, k-major, or where `streamed` (a launch per step) only the round's
// [k_tile][cols] of it, staged with the rows. The product runs over K inputs into `cols`
// columns; A is the accumulator's size, S the layer's, mma: the product runs on tensor cores
// (persistent_mma).
struct PersistentLayout {
  size_t tile, sums, scratch, constants, weight, bytes;
  bool mma, streamed;
  int k_tile;    // inputs staged per round (see the constructor); the last round may be short
  int k_padded;  // K rounded up to the product's step: the weight's rows past K are zero

  // A round stages up to kPersistStagedBytes of the chunk's rows, at least one step of the
  // product (kFfmaStep on FFMA; 16 inputs per warp of an output tile on tensor cores) and a
  // multiple of it: its loads are issued together, so a chunk waits on few L2 latencies (at
  // H=512 in bf16, two rounds instead of 16). The slice is padded to the step, not to k_tile
  // (H=160 in float: 160 rows, not 256).
  __host__ __device__ PersistentLayout(int64_t K, int cols, int U, size_t acc, size_t s,
                                       bool mma_, bool streamed_)
      : mma(mma_), streamed(streamed_) {
    // on tensor cores: the warps per 16-column output tile (cols is a multiple of 16 there)
    const int threads = kPersistThreadsPerUnit * U,
              splits = mma ? threads / 32 / (cols / 16) : 1;
    const int step = mma ? 16 * splits : kFfmaStep;
    const int element = static_cast<int>(mma ? s : acc);
    const int fit = kPersistStagedBytes / (kPersistRows * element) / step * step;
    const int64_t most = fit > step ? fit : step, k_steps = (K + step - 1) / step * step;
    k_tile = static_cast<int>(k_steps < most ? k_steps : most);
    k_padded = static_cast<int>(k_steps);
    size_t at = 0;
    auto take = [&](size_t bytes) {
      const size_t here = (at + 31) / 32 * 32;
      at = here + bytes;
      return here;
    };
    tile = take(mma ? kPersistRows * (k_tile + kMmaPad) * s : kPersistRows * (k_tile + 1) * acc);
    sums = take(mma ? splits * kPersistRows * (cols + kMmaAccPad) * sizeof(float) : 0);
    scratch = take(threads * acc);
    constants = take(16 * U * acc);
    weight = take(0);
    bytes = weight + size_t(streamed ? k_tile : k_padded) * cols * s;
  }
};

// Whether a persistent product into `cols` columns runs on tensor cores: a tensor-core dtype and
// whole 16-column output tiles (else FFMA, e.g. the backward's 8 columns at U=8).
template <typename S>
__host__ __device__ constexpr bool persistent_mma(int cols) {
  return kMmaDtype<S> && cols % 16 == 0;
}

// The per-unit constants in shared memory: [4U] per gate column (gate-major: column g U + u),
// [U] per unit.
template <typename A>
struct UnitConstants {
  A *gamma_hh, *mean_hh, *rstd_hh, *gamma_c, *beta_c, *mean_c, *rstd_c;

  __device__ UnitConstants(unsigned char* smem, const PersistentLayout& layout, int U) {
    A* at = reinterpret_cast<A*>(smem + layout.constants);
    gamma_hh = at;
    mean_hh = at + 4 * U;
    rstd_hh = at + 8 * U;
    gamma_c = at + 12 * U;
    beta_c = at + 13 * U;
    mean_c = at + 14 * U;
    rstd_c = at + 15 * U;
  }
};

// Where a block's slice of W_hh comes from: column cc of the slice is W_hh's row (forward:
// gate-major unit columns) or column (backward) source(cc), element k at source(cc) + k *
// k_stride for k < K; source(cc) < 0 past H's units.
template <typename S, typename Source>
struct Slice {
  const S* weight_hh;
  int64_t K, k_stride;
  Source source;
};
template <typename S, typename Source>
__device__ Slice<S, Source> slice_of(const S* weight_hh, int64_t K, int64_t k_stride,
                                     Source source) {
  return Slice<S, Source>{weight_hh, K, k_stride, source};
}

// Copies rows k_begin .. k_begin + rows - 1 of the slice into shared memory at weight,
// [rows][cols] k-major; zero past K and past H's units.
template <typename S, typename Source>
__device__ void load_slice(S* weight, const Slice<S, Source>& slice, int64_t k_begin, int rows,
                           int cols) {
  const int threads = blockDim.x;
  for (int64_t idx = threadIdx.x; idx < int64_t(rows) * cols; idx += threads) {
    // forward: k fastest (W's rows are contiguous); backward: columns fastest
    const int64_t kk = slice.k_stride == 1 ? idx % rows : idx / cols, k = k_begin + kk;
    const int col = static_cast<int>(slice.k_stride == 1 ? idx / rows : idx % cols);
    const int64_t at = slice.source(col);
    if (k < slice.K && at >= 0) {
      weight[kk * cols + col] = slice.weight_hh[at + k * slice.k_stride];
    } else {
      store(weight + kk * cols + col, 0.0f);
    }
  }
}

// out[r] = sum_k a[b, k] w[k, cc] for the calling thread's rows b = b0 + rg + r * groups of the
// chunk (thread (rg, cc) = (tid / cols, tid % cols), groups = threads / cols, R = kPersistRows /
// groups; rows >= n and k >= K read as 0), w the block's slice of W_hh in shared memory at
// `weight`: all of it, or where the layout is streamed, each round's rows staged from `slice`
// with a's. On tensor cores each warp owns one 16-column output tile and every `splits`-th
// 16-deep slice of each staged k_tile; the splits' float sums are added in shared memory in a
// fixed order. On FFMA (layout.mma false: columns that make no whole 16-column tile) each thread
// sums its column's rows. a is rounded to S on tensor cores (it may be an A-typed gradient),
// float's as `tf32` says (WarpMma<float>).
template <typename S, typename Source, typename TA, typename A, int R>
__device__ void chunk_product(const TA* a, int64_t lda, int n, int b0, S* weight,
                              const Slice<S, Source>& slice, int cols, bool tf32,
                              const PersistentLayout& layout, unsigned char* smem, A (&out)[R]) {
  const int tid = threadIdx.x, threads = blockDim.x, groups = threads / cols, rg = tid / cols,
            cc = tid % cols;
  const int64_t K = slice.K;
  // stages round k0's kt inputs of the chunk's rows (k fastest: a's rows are contiguous) in
  // `tile` (rounded to its type), with the round's rows of the slice where streamed; returns
  // w's row k0
  using V = decltype(to_acc(*a));
  auto stage = [&](auto* tile, int ld, int k0, int kt) {
    for (int idx = tid; idx < kPersistRows * kt; idx += threads) {
      const int rr = idx / kt, kk = idx % kt;
      const int64_t b = b0 + rr, k = k0 + kk;
      store(tile + rr * ld + kk, (b < n && k < K) ? to_acc(a[b * lda + k]) : V(0));
    }
    if (layout.streamed) load_slice(weight, slice, k0, kt, cols);
    return layout.streamed ? weight : weight + int64_t(k0) * cols;
  };
  if constexpr (kTensorCores<S>) {
    if (layout.mma) {
      const int ld = layout.k_tile + kMmaPad, ld_sums = cols + kMmaAccPad;
      S* tile = reinterpret_cast<S*>(smem + layout.tile);          // [kPersistRows][ld]
      float* sums = reinterpret_cast<float*>(smem + layout.sums);  // [splits][rows][ld_sums]
      const int tiles = cols / 16, warp = tid / 32, col16 = warp % tiles * 16,
                k16 = warp / tiles * 16, splits = threads / 32 / tiles;
      WarpMma<S> mma(tf32);
      mma.zero();
      for (int k0 = 0; k0 < layout.k_padded; k0 += layout.k_tile) {
        // this round's inputs: k_tile, or what is left of the slice
        const int kt = layout.k_padded - k0 < layout.k_tile ? layout.k_padded - k0 : layout.k_tile;
        __syncthreads();  // every warp has read the previous round (and the weights are in)
        const S* w = stage(tile, ld, k0, kt);
        __syncthreads();
        // this warp's 16-deep slices: k16, k16 + 16 splits, ...
        for (int kk = k16; kk < kt; kk += 16 * splits) {
          mma.add(tile + kk, ld, w + kk * cols + col16, cols);
        }
      }
      mma.store(sums + (k16 / 16) * kPersistRows * ld_sums + col16, ld_sums);
      __syncthreads();
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int rr = rg + r * groups;
        float total = 0.0f;
        for (int s = 0; s < splits; ++s) total += sums[(s * kPersistRows + rr) * ld_sums + cc];
        out[r] = total;
      }
      return;
    }
  }
  // FFMA (a layout without tensor cores, or a build below sm_80), staged in A; a 16-bit layer
  // stages in S, the size the layout (the same on host and device) may have reserved for it
  using Staged = std::conditional_t<kHalfWidth<S>, S, A>;
  const int ld = layout.k_tile + 1;
  Staged* tile = reinterpret_cast<Staged*>(smem + layout.tile);  // [kPersistRows][ld]
#pragma unroll
  for (int r = 0; r < R; ++r) out[r] = A(0);
  for (int k0 = 0; k0 < layout.k_padded; k0 += layout.k_tile) {
    // this round's inputs: k_tile, or what is left of the slice
    const int kt = layout.k_padded - k0 < layout.k_tile ? layout.k_padded - k0 : layout.k_tile;
    __syncthreads();  // every thread has read the previous round (and the weights are in)
    const S* w = stage(tile, ld, k0, kt);
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kt; ++kk) {
      const A wv = to_acc(w[kk * cols + cc]);
#pragma unroll
      for (int r = 0; r < R; ++r) out[r] += to_acc(tile[(rg + r * groups) * ld + kk]) * wv;
    }
  }
}

#define BNLSTM_TRY(expr)                                      \
  do {                                                        \
    const cudaError_t bnlstm_status_ = (expr);                \
    if (bnlstm_status_ != cudaSuccess) return bnlstm_status_; \
  } while (0)

// Picks U for `kernel` over K inputs into cols_per_unit x U columns of H units: the smallest U
// whose grid fits one block per SM fills the most SMs; else the smallest U whose grid the SMs
// hold at once; else plan.why says why not. A tensor-core dtype first tries the U that give
// whole 16-column tiles, then the others on FFMA (at H=1000 in float the backward's U=16 slice
// is over the shared memory, U=8's fits).
template <typename S>
cudaError_t plan_persistent(const void* kernel, int64_t H, int64_t K, int cols_per_unit,
                            PersistentPlan& plan) {
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
  size_t smallest = 0;  // shared memory of the smallest layout tried
  for (const bool mma : {true, false}) {
    for (const bool one_per_sm : {true, false}) {
      for (const int U : kPersistUnits) {
        const int cols = cols_per_unit * U;
        const bool on_tensor_cores = persistent_mma<S>(cols);
        if (on_tensor_cores != (mma && kMmaDtype<S>)) continue;
        const size_t bytes =
            PersistentLayout(K, cols, U, sizeof(A), sizeof(S), on_tensor_cores, false).bytes;
        smallest = smallest == 0 ? bytes : std::min(smallest, bytes);
        const int blocks = static_cast<int>((H + U - 1) / U),
                  threads = kPersistThreadsPerUnit * U;
        if (bytes > size_t(shared_max)) continue;
        BNLSTM_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
        int per_sm = 0;
        BNLSTM_TRY(
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, bytes));
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
    if (!kMmaDtype<S>) break;  // the first pass tried every U
  }
  plan.why = smallest > size_t(shared_max)
                 ? "W_hh's slice does not fit the shared memory of a block"
                 : "the grid is larger than the blocks the SMs hold at once";
  return cudaSuccess;
}

// The launch of `kernel` per step where the loop does not run persistent (plan.why kept): W_hh
// streamed through shared memory with the rows, so any H fits; the narrowest blocks (U from
// kStepUnits, the most blocks: every SM busy where H allows) on tensor cores where the dtype
// has them, U >= min_units. cudaErrorInvalidValue where not even that fits the device.
template <typename S>
cudaError_t plan_step(const void* kernel, int64_t H, int64_t K, int cols_per_unit, int min_units,
                      PersistentPlan& plan) {
  using A = typename AccType<S>::type;
  int device = 0, shared_max = 0;
  BNLSTM_TRY(cudaGetDevice(&device));
  BNLSTM_TRY(cudaDeviceGetAttribute(&shared_max, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                    device));
  for (const bool mma : {true, false}) {
    for (const int U : kStepUnits) {
      const int cols = cols_per_unit * U;
      const bool on_tensor_cores = persistent_mma<S>(cols);
      if (U < min_units || on_tensor_cores != (mma && kMmaDtype<S>)) continue;
      const size_t bytes =
          PersistentLayout(K, cols, U, sizeof(A), sizeof(S), on_tensor_cores, true).bytes;
      if (bytes > size_t(shared_max)) continue;
      BNLSTM_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
      plan.units = U;
      plan.blocks = static_cast<int>((H + U - 1) / U);
      plan.threads = kPersistThreadsPerUnit * U;
      plan.shared_bytes = bytes;
      return cudaSuccess;
    }
  }
  return cudaErrorInvalidValue;
}

#undef BNLSTM_TRY

}  // namespace bnlstm
