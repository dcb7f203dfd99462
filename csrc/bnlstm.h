// Parameters of the fused BN-LSTM steps (one layer and direction), shared by the ops
// (bnlstm.cpp), the CPU loops (loops_cpu.cpp) and the CUDA kernels (persistent_*.cuh).
// S is the layer's dtype, A its accumulator (float; double for float64 layers). Sizes: T steps,
// B rows, H hidden units, G = 4H gate features (i, f, g, o), L running-statistics rows. All
// tensors are contiguous.
#pragma once

#include <cstdint>

namespace bnlstm {

// The input's batch statistics are computed before the loops (bnlstm_cuda/input_norm.py): the
// steps get its contribution u = gamma_ih BN(x W_ih^T) + bias and keep the two norms on the
// recurrence. The CPU loops may instead take x W_ih^T with those statistics (input_stat) and
// normalise it as they read it, and then also do that norm's backward in their steps: no
// (T, B, 4H) pass and buffer for u, nor a pass after the loop for the input's gradient. Those
// fields come last: the others' initialisers (the emulation's drivers) leave them null.
struct FwdParams {
  const void* u;          // [T, B, G] A, in: the input's contribution to the pre-activation,
                          //   or x W_ih^T where input_stat is given
  void* hw;               // [T, B, G] A, out: raw h_{t-1} W_hh^T; the CPU loops store a step
                          //   block-major ([block of units][B][gate][unit]): only their
                          //   backward reads it
  void* y;                // [T+1, B, H] S: row 0 = h0 (in), row t+1 = h_t (out), zero past n
  void* cell;             // [T+1, B, H] A: row 0 = c0 (in), row t+1 = c_t (out)
  const void* weight_hh;  // [G, H] S
  const void* gamma_hh;   // [G] S: scale of BN(h W_hh^T)
  const void* gamma_c;    // [H] S: scale of BN(c)
  const void* beta_c;     // [H] S: shift of BN(c)
  void* run_mean_hh;      // [L, G] A: running rows, updated in place by batch-statistics steps
  void* run_var_hh;       // [L, G] A: unbiased
  void* run_mean_c;       // [L, H] A
  void* run_var_c;        // [L, H] A
  void* stat_hh;          // [T, 2, G] A, out: mean and 1/std used at step t
  void* stat_c;           // [T, 2, H] A, out
  void* h_n;              // [B, H] S, out: row b takes h_t at its last step (n_next <= b < n)
  void* c_n;              // [B, H] S, out: likewise c_t
  const void* factors;    // [T] A: update weight of step t (a cumulative average), or nullptr:
                          //   the weight comes as the launch's argument
  int64_t B;              // rows of the batch (running rows are a prefix: sorted by length)
  int64_t H;              // hidden units
  double eps;             // added to the variance
  bool keep_hw;           // a backward reads hw: the CPU loops write it only then (the CUDA
                          //   loops always do: their steps read it back)
  bool tf32;              // float32 layers on tensor cores: h W_hh^T in one TF32 product
                          //   (torch.backends.cuda.matmul.allow_tf32), else in three (tf32x3)
  const void* input_stat; // [T, 2, G] A or nullptr: the mean and 1/std step t normalises
                          //   x W_ih^T with (CPU loops only)
  const void* gamma_ih;   // [G] S, with input_stat
  const void* bias;       // [G] S or nullptr, with input_stat
};

struct BwdParams {
  const void* u;          // [T, B, G] A: the input's contribution, as the forward read it
                          //   (x W_ih^T where input_stat is given)
  const void* hw;         // [T, B, G] A: as saved by the forward
  const void* cell;       // [T+1, B, H] A: row 0 = c0
  const void* weight_hh;  // [G, H] S
  const void* gamma_hh;   // [G] S
  const void* gamma_c;    // [H] S
  const void* beta_c;     // [H] S
  const void* stat_hh;    // [T, 2, G] A: mean and 1/std used at step t
  const void* stat_c;     // [T, 2, H] A
  const void* dy;         // [T, B, H] S: gradient of the output
  const void* dh_n;       // [B, H] A: gradient of h_n, taken by each row at its last step
  void* dpre;             // [T, B, G] A, out (zero past n): gradient of the pre-activation,
                          //   or with input_stat that of x W_ih^T
  void* dpre_hh;          // [T+1, B, G] A, out: gradient of h_{t-1} W_hh^T; row t+1 is read,
                          //   row T stays zero
  void* dh;               // [B, H] A, scratch: dL/dh_t of the current step
  void* dc;               // [B, H] A, carry: dL/dc_t in, dL/dc_{t-1} out (starts as dc_n)
  void* dsum;             // [T, G] A, out: batch sums of dpre * xhat_hh
  void* dsum_c;           // [T, 2, H] A, out: batch sums of dcn*chat, dcn
  int64_t B;              // rows of the batch
  int64_t H;              // hidden units
  bool tf32;              // as FwdParams::tf32, for dpre_hh W_hh
  const void* input_stat; // [T, 2, G] A or nullptr: as FwdParams; then dpre holds the gradient
                          //   of x W_ih^T, and dsum_ih the sums for dgamma_ih and dbias
  const void* gamma_ih;   // [G] S, with input_stat
  const void* bias;       // [G] S or nullptr, with input_stat
  void* dsum_ih;          // [T, 2, G] A, out with input_stat: batch sums of dpre*xhat_ih, dpre
};

}  // namespace bnlstm
