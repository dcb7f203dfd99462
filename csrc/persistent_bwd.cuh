// The backward: one cooperative launch runs every step of the reverse loop of a layer and
// direction (persistent), or where the device cannot hold that grid, the same kernel runs one
// step per launch. Block x owns hidden units j0 = x * U .. j0 + U - 1 (their 4 gate columns of
// dpre and dpre_hh, their columns of dh and dc) across every batch row, so its batch sums stay
// inside it. Persistent, it keeps W_hh's U columns (all 4H rows) in shared memory for the whole
// loop; per step, it streams them through shared memory with dpre_hh's rows. Per step t, from
// the last down:
//   1. dh_t = dy_t + dpre_hh[t+1] W_hh (every block's columns of step t+1, rows still running at
//      t+1) + dh_n (rows ending at t), and the batch sums through BN(c);
//   2. through the gates: dpre[t] and the dc carry;
//   3. per gate, through BN(h W_hh^T): dpre_hh[t] and the per-step sum of gamma_hh's gradient;
// then one grid barrier: step t - 1 reads every block's dpre_hh[t].
// Thread (er, eu) = (tid / U, tid % U) owns unit eu and the rows er, er + 16, ... in every pass,
// so it re-reads only what it wrote itself between them.
#pragma once

#include "persistent_common.cuh"

namespace bnlstm {

// Per step on the device: running rows n[t] (n[T] = 0) and whether step t used batch statistics.
struct BwdStepTable {
  const int* n;          // [T + 1]
  const int* use_batch;  // [T]
};

// Steps t1 - 1 down to t0, a grid barrier between them (arrivals: the barrier's count; unused
// for one step); W_hh's slice streamed per round where `streamed`, else loaded once.
template <typename S>
__global__ void __launch_bounds__(kPersistMaxThreads, 1)
persistent_bwd_kernel(BwdParams p, BwdStepTable steps, int t0, int t1, int U, bool streamed,
                      unsigned* arrivals) {
  using A = typename AccType<S>::type;
  BNLSTM_DYNAMIC_SHARED(smem);
  const int64_t H = p.H, G = 4 * H;
  const int tid = threadIdx.x, er = tid / U, eu = tid % U;
  constexpr int groups = kPersistThreadsPerUnit;  // threads per unit, striding the rows
  const PersistentLayout layout(G, U, U, sizeof(A), sizeof(S), persistent_mma<S>(U), streamed);
  A* scratch = reinterpret_cast<A*>(smem + layout.scratch);
  const UnitConstants<A> k(smem, layout, U);
  S* weight = reinterpret_cast<S*>(smem + layout.weight);  // [k_padded or k_tile][U]
  const int64_t j0 = int64_t(blockIdx.x) * U, j = j0 + eu;
  const bool ok = j < H;

  // column cc of the slice: W_hh's column j0 + cc
  const auto slice = slice_of(static_cast<const S*>(p.weight_hh), G, H,
                              [=](int cc) -> int64_t { return j0 + cc < H ? j0 + cc : -1; });
  if (!streamed) load_slice(weight, slice, 0, layout.k_padded, U);
  if (tid < 4 * U) {  // gate column tid: gate tid / U, unit j0 + tid % U
    const int64_t unit = j0 + tid % U;
    k.gamma_hh[tid] =
        unit < H ? to_acc(static_cast<const S*>(p.gamma_hh)[(tid / U) * H + unit]) : A(0);
  }
  if (er == 0 && ok) {
    k.gamma_c[eu] = to_acc(static_cast<const S*>(p.gamma_c)[j]);
    k.beta_c[eu] = to_acc(static_cast<const S*>(p.beta_c)[j]);
  }
  const A* dh_n = static_cast<const A*>(p.dh_n);
  A* dh = static_cast<A*>(p.dh);
  A* dc = static_cast<A*>(p.dc);

  for (int t = t1 - 1; t >= t0; --t) {
    const int n = steps.n[t], n_next = steps.n[t + 1];
    const bool use_batch = steps.use_batch[t] != 0;
    const BwdStepRows<S, A> step(p, t);

    if (tid < 4 * U && j0 + tid % U < H) {
      const int64_t c = (tid / U) * H + j0 + tid % U;
      k.mean_hh[tid] = step.stat_hh_t[c];
      k.rstd_hh[tid] = step.stat_hh_t[G + c];
    }
    if (er == 0 && ok) {
      k.mean_c[eu] = step.stat_c_t[j];
      k.rstd_c[eu] = step.stat_c_t[H + j];
    }
    __syncthreads();  // the step's statistics (and at t = T - 1 the weights and gammas)

    // gate g of row b and this thread's unit: u + gamma_hh BN(hw)
    auto pre = [&](int64_t b, int g) {
      const int64_t at = b * G + g * H + j;
      const int gc = g * U + eu;
      return recurrent_preactivation(step.u_t[at], step.hw_t[at], k.mean_hh[gc], k.rstd_hh[gc],
                                     k.gamma_hh[gc]);
    };
    auto normalised_cell = [&](int64_t b) {
      return cell_norm(step.c_t[b * H + j], k.mean_c[eu], k.rstd_c[eu], k.gamma_c[eu],
                       k.beta_c[eu]);
    };

    // 1. dh_t and the batch sums through the cell norm
    A sum_dcn = A(0), sum_dcn_chat = A(0);
    for (int b0 = 0; b0 < n; b0 += kPersistRows) {
      A carried[1];  // row b0 + er of dpre_hh[t+1] W_hh, this thread's unit
      chunk_product(step.dpre_hh_next, G, n_next, b0, weight, slice, U, p.tf32, layout, smem,
                    carried);
      const int64_t b = b0 + er;
      if (b < n && ok) {
        const A dh_b =
            to_acc(step.dy_t[b * H + j]) + carried[0] + (b >= n_next ? dh_n[b * H + j] : A(0));
        dh[b * H + j] = dh_b;
        const A chat = (step.c_t[b * H + j] - k.mean_c[eu]) * k.rstd_c[eu];
        const A dcn = dh_b * sigmoid(pre(b, 3)) * sech2(normalised_cell(b));
        sum_dcn += dcn;
        sum_dcn_chat += dcn * chat;
      }
    }
    sum_dcn = column_sum(sum_dcn, scratch, U, groups);
    sum_dcn_chat = column_sum(sum_dcn_chat, scratch, U, groups);
    if (er == 0 && ok) {
      step.dsum_c_t[j] = sum_dcn_chat;
      step.dsum_c_t[H + j] = sum_dcn;
    }

    // 2. through the gates
    for (int64_t b = er; b < n && ok; b += groups) {
      const A dh_b = dh[b * H + j];
      const A chat = (step.c_t[b * H + j] - k.mean_c[eu]) * k.rstd_c[eu];
      const A i = sigmoid(pre(b, 0)), f = sigmoid(pre(b, 1)), o = sigmoid(pre(b, 3));
      const A pre_g = pre(b, 2), gg = tanh_(pre_g);
      const A cn = normalised_cell(b);
      const A dcn = dh_b * o * sech2(cn);
      const A dc_b = dc[b * H + j] + k.gamma_c[eu] * bn_backward(dcn, chat, k.rstd_c[eu], sum_dcn,
                                                                 sum_dcn_chat, A(n), use_batch);
      dc[b * H + j] = dc_b * f;
      A* out = step.dpre_t + b * G + j;
      out[0] = dc_b * gg * dsigmoid(i);
      out[H] = dc_b * step.c_prev[b * H + j] * dsigmoid(f);
      out[2 * H] = dc_b * i * sech2(pre_g);
      out[3 * H] = dh_b * tanh_(cn) * dsigmoid(o);
    }

    // 3. through BN(h W_hh^T), one gate at a time
    for (int g = 0; g < 4; ++g) {
      const int64_t c = g * H + j;
      const int gc = g * U + eu;
      const A mean_hh = k.mean_hh[gc], rstd_hh = k.rstd_hh[gc], gamma_hh = k.gamma_hh[gc];
      A sum_d = A(0), sum_d_hh = A(0);
      for (int64_t b = er; b < n && ok; b += groups) {
        const A d = step.dpre_t[b * G + c];
        sum_d += d;
        sum_d_hh += d * ((step.hw_t[b * G + c] - mean_hh) * rstd_hh);
      }
      sum_d_hh = column_sum(sum_d_hh, scratch, U, groups);
      if (use_batch) sum_d = column_sum(sum_d, scratch, U, groups);
      if (er == 0 && ok) step.dsum_t[c] = sum_d_hh;
      for (int64_t b = er; b < n && ok; b += groups) {
        const A xhat_hh = (step.hw_t[b * G + c] - mean_hh) * rstd_hh;
        step.dpre_hh_t[b * G + c] = bn_backward(gamma_hh * step.dpre_t[b * G + c], xhat_hh, rstd_hh,
                                           gamma_hh * sum_d, gamma_hh * sum_d_hh, A(n),
                                           use_batch);
      }
    }
    // dpre_hh[t] of every block, for step t - 1
    if (t > t0) grid_sync(arrivals, unsigned(t1 - t) * gridDim.x);
  }
}

template <typename S>
cudaError_t plan_persistent_bwd(int64_t H, PersistentPlan& plan) {
  return plan_persistent<S>(reinterpret_cast<const void*>(persistent_bwd_kernel<S>), H, 4 * H, 1,
                            plan);
}

// Per step the backward takes U >= 8: every block reads all of dpre_hh[t+1] (B x 4H), so the
// narrowest blocks would multiply that traffic.
template <typename S>
cudaError_t plan_step_bwd(int64_t H, PersistentPlan& plan) {
  return plan_step<S>(reinterpret_cast<const void*>(persistent_bwd_kernel<S>), H, 4 * H, 1, 8,
                      plan);
}

template <typename S>
cudaError_t launch_persistent_bwd(const BwdParams& p, const PersistentPlan& plan, const int* n,
                                  const int* use_batch, int T, unsigned* arrivals,
                                  cudaStream_t stream) {
  return BNLSTM_LAUNCH_COOPERATIVE(persistent_bwd_kernel<S>, dim3(plan.blocks),
                                   dim3(plan.threads), plan.shared_bytes, stream, p,
                                   BwdStepTable{n, use_batch}, 0, T, plan.units, false, arrivals);
}

template <typename S>
void launch_step_bwd(const BwdParams& p, const PersistentPlan& plan, const int* n,
                     const int* use_batch, int t, cudaStream_t stream) {
  BNLSTM_LAUNCH(persistent_bwd_kernel<S>, dim3(plan.blocks), dim3(plan.threads),
                plan.shared_bytes, stream, p, BwdStepTable{n, use_batch}, t, t + 1, plan.units,
                true, static_cast<unsigned*>(nullptr));
}

}  // namespace bnlstm
