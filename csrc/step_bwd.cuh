// Backward step t of one layer and direction (the reverse loop), mirroring
// bnlstm_cuda/backends/triton_step.py's _bwd_step_kernel pass for pass:
//   1. dh_t = dy_t + dpre_hh[t+1] W_hh (rows still running at t+1) + dh_n (rows ending at t),
//      and the batch sums through BN(c);
//   2. through the gates: dpre[t], the pre-activation's gradient (u's: the input norm's
//      backward runs on it after the loop), and the dc carry;
//   3. per gate, through BN(h W_hh^T): dpre_hh[t] and the per-step sum that becomes the
//      gamma_hh gradient.
#pragma once

#include "step_common.cuh"

namespace bnlstm {

// At least 1 block per SM, as the forward step's (step_fwd.cuh): with the default, ptxas held
// the bfloat16 kernel at 64 registers and spilled.
template <typename S>
__global__ void __launch_bounds__(kThreads, 1)
bwd_step_kernel(BwdParams p, int t, int n, int n_next, bool use_batch) {
  using A = typename AccType<S>::type;
  __shared__ ProductTiles<S> tiles;
  __shared__ A scratch[kThreads];
  __shared__ StepConstants<A> k;

  const int rg = threadIdx.x / kBlockH, col = threadIdx.x % kBlockH;
  const int64_t H = p.H, G = 4 * H;
  const int64_t col0 = int64_t(blockIdx.x) * kBlockH, j = col0 + col;
  const bool j_ok = j < H, writer = j_ok && rg == 0;

  const BwdStepRows<S, A> step(p, t);
  const A* dh_n = static_cast<const A*>(p.dh_n);
  A* dh = static_cast<A*>(p.dh);
  A* dc = static_cast<A*>(p.dc);

  if (writer) {
    load_gammas(k, static_cast<const S*>(p.gamma_hh), static_cast<const S*>(p.gamma_c),
                static_cast<const S*>(p.beta_c), H, j, col);
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      k.mean_hh[g][col] = step.stat_hh_t[g * H + j];
      k.rstd_hh[g][col] = step.stat_hh_t[G + g * H + j];
    }
    k.mean_c[col] = step.stat_c_t[j];
    k.rstd_c[col] = step.stat_c_t[H + j];
  }
  __syncthreads();  // k is read by every row group

  // 1. dh_t and the batch sums through the cell norm
  A sum_dcn = A(0), sum_dcn_chat = A(0);
  for (int b0 = 0; b0 < n; b0 += kBlockB) {
    A carried[kRowsPerThread];  // this thread's rows of dpre_hh[t+1] W_hh
    tile_matmul(step.dpre_hh_next, G, n_next, b0, G, static_cast<const S*>(p.weight_hh), H, 1, col0,
                H, p.tf32, carried, tiles);
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) {
      const int64_t b = b0 + rg + r * kRowGroups;
      if (b < n && j_ok) {
        const A dh_b =
            to_acc(step.dy_t[b * H + j]) + carried[r] + (b >= n_next ? dh_n[b * H + j] : A(0));
        dh[b * H + j] = dh_b;
        const A chat = (step.c_t[b * H + j] - k.mean_c[col]) * k.rstd_c[col];
        const A o = sigmoid(gate_preactivation(k, step.u_t, step.hw_t, G, H, b, 3, j, col));
        const A dcn = dh_b * o * sech2(cell_norm(step.c_t[b * H + j], k.mean_c[col], k.rstd_c[col],
                                                    k.gamma_c[col], k.beta_c[col]));
        sum_dcn += dcn;
        sum_dcn_chat += dcn * chat;
      }
    }
  }
  sum_dcn = column_sum(sum_dcn, scratch);
  sum_dcn_chat = column_sum(sum_dcn_chat, scratch);
  if (writer) {
    step.dsum_c_t[j] = sum_dcn_chat;
    step.dsum_c_t[H + j] = sum_dcn;
  }

  // 2. through the gates; each thread re-reads only the dh it stored itself (same rows)
  for (int64_t b = rg; b < n && j_ok; b += kRowGroups) {
    const A dh_b = dh[b * H + j];
    const A chat = (step.c_t[b * H + j] - k.mean_c[col]) * k.rstd_c[col];
    const A i = sigmoid(gate_preactivation(k, step.u_t, step.hw_t, G, H, b, 0, j, col));
    const A f = sigmoid(gate_preactivation(k, step.u_t, step.hw_t, G, H, b, 1, j, col));
    const A pre_g = gate_preactivation(k, step.u_t, step.hw_t, G, H, b, 2, j, col);
    const A gg = tanh_(pre_g);
    const A o = sigmoid(gate_preactivation(k, step.u_t, step.hw_t, G, H, b, 3, j, col));
    const A cn = cell_norm(step.c_t[b * H + j], k.mean_c[col], k.rstd_c[col], k.gamma_c[col],
                           k.beta_c[col]);
    const A tanh_cn = tanh_(cn);
    const A dcn = dh_b * o * sech2(cn);
    const A dc_b = dc[b * H + j] + k.gamma_c[col] * bn_backward(dcn, chat, k.rstd_c[col],
                                                                sum_dcn, sum_dcn_chat, A(n),
                                                                use_batch);
    dc[b * H + j] = dc_b * f;
    A* out = step.dpre_t + b * G + j;
    out[0] = dc_b * gg * dsigmoid(i);
    out[H] = dc_b * step.c_prev[b * H + j] * dsigmoid(f);
    out[2 * H] = dc_b * i * sech2(pre_g);
    out[3 * H] = dh_b * tanh_cn * dsigmoid(o);
  }

  // 3. through BN(h W_hh^T), one gate at a time (same rows per thread as pass 2)
  for (int g = 0; g < 4; ++g) {
    const int64_t c = g * H + j;
    const A mean_hh = k.mean_hh[g][col], rstd_hh = k.rstd_hh[g][col];
    A sum_d = A(0), sum_d_hh = A(0);
    for (int64_t b = rg; b < n && j_ok; b += kRowGroups) {
      const A d = step.dpre_t[b * G + c];
      sum_d += d;
      sum_d_hh += d * ((step.hw_t[b * G + c] - mean_hh) * rstd_hh);
    }
    sum_d_hh = column_sum(sum_d_hh, scratch);
    if (use_batch) sum_d = column_sum(sum_d, scratch);  // only batch statistics subtract it
    if (writer) step.dsum_t[c] = sum_d_hh;
    const A gamma_hh = k.gamma_hh[g][col];
    for (int64_t b = rg; b < n && j_ok; b += kRowGroups) {
      const A xhat_hh = (step.hw_t[b * G + c] - mean_hh) * rstd_hh;
      step.dpre_hh_t[b * G + c] = bn_backward(gamma_hh * step.dpre_t[b * G + c], xhat_hh, rstd_hh,
                                         gamma_hh * sum_d, gamma_hh * sum_d_hh, A(n), use_batch);
    }
  }
}

template <typename S>
void launch_bwd_step(const BwdParams& p, int t, int n, int n_next, bool use_batch,
                     cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.H + kBlockH - 1) / kBlockH));
  BNLSTM_LAUNCH(bwd_step_kernel<S>, grid, kThreads, stream, p, t, n, n_next, use_batch);
}

}  // namespace bnlstm
