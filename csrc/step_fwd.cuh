// Forward step t of one layer and direction (rows b < n = batch_sizes[t]), mirroring
// bnlstm_cuda/backends/triton_step.py's _fwd_step_kernel pass for pass:
//   per gate: hw = h_{t-1} W_hh^T (stored), its batch sum, then centred squares, statistics
//             and the running-row update;
//   pre = u + gamma_hh BN(hw) (u: the input's contribution, normalised before the loop);
//   c_t = f c_{t-1} + i g (stored), its statistics; h_t = o tanh(BN(c_t)) (stored).
#pragma once

#include "step_common.cuh"

namespace bnlstm {

// At least 1 block per SM, not more: without it ptxas capped the half-precision kernels at 64
// registers and spilled; the grid has only H / kBlockH blocks, so blocks per SM do not limit it.
template <typename S>
__global__ void __launch_bounds__(kThreads, 1)
fwd_step_kernel(FwdParams p, int t, int n, int n_next, int row, double factor_arg) {
  using A = typename AccType<S>::type;
  __shared__ ProductTiles<S> tiles;
  __shared__ A scratch[kThreads];
  __shared__ StepConstants<A> k;

  const int rg = threadIdx.x / kBlockH, col = threadIdx.x % kBlockH;
  const int64_t H = p.H, G = 4 * H, B = p.B;
  const int64_t col0 = int64_t(blockIdx.x) * kBlockH, j = col0 + col;
  const bool j_ok = j < H, writer = j_ok && rg == 0;
  const A factor = p.factors ? static_cast<const A*>(p.factors)[t] : A(factor_arg);
  const A eps = A(p.eps);
  const bool use_batch = factor_arg >= 0;

  const A* u_t = static_cast<const A*>(p.u) + t * B * G;
  A* hw_t = static_cast<A*>(p.hw) + t * B * G;
  const S* h_prev = static_cast<const S*>(p.y) + t * B * H;
  S* h_next = static_cast<S*>(p.y) + (t + 1) * B * H;
  const A* c_prev = static_cast<const A*>(p.cell) + t * B * H;
  A* c_next = static_cast<A*>(p.cell) + (t + 1) * B * H;
  A* stat_hh_t = static_cast<A*>(p.stat_hh) + t * 2 * G;
  A* stat_c_t = static_cast<A*>(p.stat_c) + t * 2 * H;
  const S* weight_hh = static_cast<const S*>(p.weight_hh);

  if (writer) {
    load_gammas(k, static_cast<const S*>(p.gamma_hh), static_cast<const S*>(p.gamma_c),
                static_cast<const S*>(p.beta_c), H, j, col);
  }

  for (int g = 0; g < 4; ++g) {
    const int64_t c = g * H + j;
    A sum_h = A(0);
    for (int b0 = 0; b0 < n; b0 += kBlockB) {
      A hw[kRowsPerThread];  // this thread's rows of h_{t-1} W_hh[gate g]^T
      tile_matmul(h_prev, H, n, b0, H, weight_hh + g * H * H, 1, H, col0, H, p.tf32, hw,
                  tiles);
#pragma unroll
      for (int r = 0; r < kRowsPerThread; ++r) {
        const int64_t b = b0 + rg + r * kRowGroups;
        if (b < n && j_ok) {
          hw_t[b * G + c] = hw[r];
          sum_h += hw[r];
        }
      }
    }
    A mean_hh, rstd_hh;
    column_statistics(sum_h, hw_t + c, G, rg, kRowGroups, n, j_ok, use_batch, factor, eps,
                      static_cast<A*>(p.run_mean_hh) + row * G + c,
                      static_cast<A*>(p.run_var_hh) + row * G + c, writer, scratch, kBlockH,
                      kRowGroups, mean_hh, rstd_hh);
    if (writer) {
      stat_hh_t[c] = mean_hh;
      stat_hh_t[G + c] = rstd_hh;
      k.mean_hh[g][col] = mean_hh;
      k.rstd_hh[g][col] = rstd_hh;
    }
  }
  __syncthreads();  // the writers' statistics in k are read by every row group

  A sum_c = A(0);
  for (int64_t b = rg; b < n && j_ok; b += kRowGroups) {
    const A i = sigmoid(gate_preactivation(k, u_t, hw_t, G, H, b, 0, j, col));
    const A f = sigmoid(gate_preactivation(k, u_t, hw_t, G, H, b, 1, j, col));
    const A gg = tanh_(gate_preactivation(k, u_t, hw_t, G, H, b, 2, j, col));
    const A c = cell_update(i, f, gg, c_prev[b * H + j]);
    c_next[b * H + j] = c;
    sum_c += c;
  }
  A mean_c, rstd_c;
  column_statistics(sum_c, c_next + j, H, rg, kRowGroups, n, j_ok, use_batch, factor, eps,
                    static_cast<A*>(p.run_mean_c) + row * H + j,
                    static_cast<A*>(p.run_var_c) + row * H + j, writer, scratch, kBlockH,
                    kRowGroups, mean_c, rstd_c);
  if (writer) {
    stat_c_t[j] = mean_c;
    stat_c_t[H + j] = rstd_c;
    k.mean_c[col] = mean_c;
    k.rstd_c[col] = rstd_c;
  }
  __syncthreads();  // the cell statistics in k

  for (int64_t b = rg; b < n && j_ok; b += kRowGroups) {
    const A c = c_next[b * H + j];
    const A o = sigmoid(gate_preactivation(k, u_t, hw_t, G, H, b, 3, j, col));
    const A h =
        o * tanh_(cell_norm(c, k.mean_c[col], k.rstd_c[col], k.gamma_c[col], k.beta_c[col]));
    store(h_next + b * H + j, h);
    if (b >= n_next) {  // row b ends at this step
      store(static_cast<S*>(p.h_n) + b * H + j, h);
      store(static_cast<S*>(p.c_n) + b * H + j, c);
    }
  }
}

template <typename S>
void launch_fwd_step(const FwdParams& p, int t, int n, int n_next, int row, double factor,
                     cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.H + kBlockH - 1) / kBlockH));
  BNLSTM_LAUNCH(fwd_step_kernel<S>, grid, kThreads, stream, p, t, n, n_next, row, factor);
}

}  // namespace bnlstm
