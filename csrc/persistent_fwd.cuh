// The forward: one cooperative launch runs every step of a layer and direction (persistent), or
// where the device cannot hold that grid, the same kernel runs one step per launch.
// Block x owns hidden units j0 = x * U .. j0 + U - 1 with all 4 gates (4U gate columns) across
// every batch row, so its batch statistics stay inside it. Persistent, it keeps those columns of
// W_hh in shared memory for the whole loop; per step, it streams them through shared memory with
// h's rows (every product reads h_{t-1} once for all 4 gates). Per step:
//   hw = h_{t-1} W_hh^T for its columns (h_{t-1} from y in chunks of rows through shared memory),
//   stored, with its batch statistics and the running-row update;
//   pre = u + gamma_hh BN(hw); c_t = f c_{t-1} + i g (stored), its statistics;
//   h_t = o tanh(BN(c_t)) stored into y, then one grid barrier: the next step reads every
//   block's h_t.
// The formulas are step_math.h's.
#pragma once

#include "persistent_common.cuh"

namespace bnlstm {

// Per step on the device: running rows n[t] (n[T] = 0), the running-statistics row rows[t] and
// the update weight factors[t] (< 0: normalise with the row; p.factors[t] instead where given).
struct StepTable {
  const int* n;           // [T + 1]
  const int* rows;        // [T]
  const double* factors;  // [T]
};

constexpr int kFwdRowGroups = 4;  // threads per gate column (16U threads, 4U columns)
constexpr int kFwdRowsPerThread = kPersistRows / kFwdRowGroups;

// Steps t0 .. t1 - 1, a grid barrier between them (arrivals: the barrier's count; unused for one
// step); W_hh's slice streamed per round where `streamed`, else loaded once.
// Threads (rg, cc) = (tid / 4U, tid % 4U) own gate column cc (gate cc / U, unit cc % U) and the
// rows rg, rg + kFwdRowGroups, ... for the product and its statistics; threads
// (er, eu) = (tid / U, tid % U) own unit eu and the rows er, er + 16, ... for the gates and the
// cell.
template <typename S>
__global__ void __launch_bounds__(kPersistMaxThreads, 1)
persistent_fwd_kernel(FwdParams p, StepTable steps, int t0, int t1, int U, bool streamed,
                      unsigned* arrivals) {
  using A = typename AccType<S>::type;
  BNLSTM_DYNAMIC_SHARED(smem);
  const int64_t H = p.H, G = 4 * H, B = p.B;
  const int cols = 4 * U, threads = cols * kFwdRowGroups, tid = threadIdx.x;
  const PersistentLayout layout(H, cols, U, sizeof(A), sizeof(S), persistent_mma<S>(cols),
                                streamed);
  A* scratch = reinterpret_cast<A*>(smem + layout.scratch);
  const UnitConstants<A> k(smem, layout, U);
  // [k_padded or k_tile][4U]: k-major, so a warp's consecutive columns read consecutive words
  S* weight = reinterpret_cast<S*>(smem + layout.weight);

  const int rg = tid / cols, cc = tid % cols, er = tid / U, eu = tid % U;
  const int row_groups_e = threads / U;
  const int64_t j0 = int64_t(blockIdx.x) * U;
  const int64_t j = j0 + cc % U, c = (cc / U) * H + j;  // product layout: unit and gate column
  const int64_t je = j0 + eu;                             // elementwise layout: unit
  const bool j_ok = j < H, je_ok = je < H;
  const A eps = A(p.eps);

  // column cc of the slice: W_hh's row of gate cc / U, unit j0 + cc % U
  const auto slice = slice_of(static_cast<const S*>(p.weight_hh), H, 1, [=](int cc) -> int64_t {
    return j0 + cc % U < H ? ((cc / U) * H + j0 + cc % U) * H : -1;
  });
  if (!streamed) load_slice(weight, slice, 0, layout.k_padded, cols);
  if (tid < cols) {
    k.gamma_hh[tid] = j_ok ? to_acc(static_cast<const S*>(p.gamma_hh)[c]) : A(0);
  }
  if (tid < U && je_ok) {
    k.gamma_c[eu] = to_acc(static_cast<const S*>(p.gamma_c)[je]);
    k.beta_c[eu] = to_acc(static_cast<const S*>(p.beta_c)[je]);
  }

  for (int t = t0; t < t1; ++t) {
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
      A hw[kFwdRowsPerThread];
      chunk_product(h_prev, H, n, b0, weight, slice, cols, p.tf32, layout, smem, hw);
#pragma unroll
      for (int r = 0; r < kFwdRowsPerThread; ++r) {
        const int64_t b = b0 + rg + r * kFwdRowGroups;
        if (b < n && j_ok) {
          hw_t[b * G + c] = hw[r];
          sum_h += hw[r];
        }
      }
    }
    A hh_mean, hh_rstd;
    column_statistics(sum_h, hw_t + c, G, rg, kFwdRowGroups, n, j_ok, use_batch, factor, eps,
                      static_cast<A*>(p.run_mean_hh) + row * G + c,
                      static_cast<A*>(p.run_var_hh) + row * G + c, j_ok && rg == 0, scratch,
                      cols, kFwdRowGroups, hh_mean, hh_rstd);
    if (j_ok && rg == 0) {
      A* stat = static_cast<A*>(p.stat_hh) + t * 2 * G;
      stat[c] = hh_mean;
      stat[G + c] = hh_rstd;
      k.mean_hh[cc] = hh_mean;
      k.rstd_hh[cc] = hh_rstd;
    }
    __syncthreads();  // the gate statistics, and hw stored by the product layout's threads

    // gate g of row b and this thread's unit: u + gamma_hh BN(hw)
    auto pre = [&](int64_t b, int g) {
      const int64_t at = b * G + g * H + je;
      const int gc = g * U + eu;
      return recurrent_preactivation(u_t[at], hw_t[at], k.mean_hh[gc], k.rstd_hh[gc],
                                     k.gamma_hh[gc]);
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
      k.mean_c[eu] = c_mean;
      k.rstd_c[eu] = c_rstd;
    }
    __syncthreads();  // the cell statistics

    for (int64_t b = er; b < n && je_ok; b += row_groups_e) {
      const A cell = c_next[b * H + je];
      const A h = sigmoid(pre(b, 3)) *
                  tanh_(cell_norm(cell, k.mean_c[eu], k.rstd_c[eu], k.gamma_c[eu], k.beta_c[eu]));
      store(h_next + b * H + je, h);
      if (b >= n_next) {  // row b ends at this step
        store(static_cast<S*>(p.h_n) + b * H + je, h);
        store(static_cast<S*>(p.c_n) + b * H + je, cell);
      }
    }
    // h_t of every block, for step t + 1
    if (t + 1 < t1) grid_sync(arrivals, unsigned(t + 1 - t0) * gridDim.x);
  }
}

template <typename S>
cudaError_t plan_persistent_fwd(int64_t H, PersistentPlan& plan) {
  return plan_persistent<S>(reinterpret_cast<const void*>(persistent_fwd_kernel<S>), H, H, 4,
                            plan);
}

template <typename S>
cudaError_t plan_step_fwd(int64_t H, PersistentPlan& plan) {
  return plan_step<S>(reinterpret_cast<const void*>(persistent_fwd_kernel<S>), H, H, 4, 1, plan);
}

template <typename S>
cudaError_t launch_persistent_fwd(const FwdParams& p, const PersistentPlan& plan, const int* n,
                                  const int* rows, const double* factors, int T,
                                  unsigned* arrivals, cudaStream_t stream) {
  return BNLSTM_LAUNCH_COOPERATIVE(persistent_fwd_kernel<S>, dim3(plan.blocks),
                                   dim3(plan.threads), plan.shared_bytes, stream, p,
                                   StepTable{n, rows, factors}, 0, T, plan.units, false,
                                   arrivals);
}

template <typename S>
void launch_step_fwd(const FwdParams& p, const PersistentPlan& plan, const int* n,
                     const int* rows, const double* factors, int t, cudaStream_t stream) {
  BNLSTM_LAUNCH(persistent_fwd_kernel<S>, dim3(plan.blocks), dim3(plan.threads),
                plan.shared_bytes, stream, p, StepTable{n, rows, factors}, t, t + 1, plan.units,
                true, static_cast<unsigned*>(nullptr));
}

}  // namespace bnlstm
