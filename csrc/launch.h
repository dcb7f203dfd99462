// The CUDA step launchers (step_fwd.cuh, step_bwd.cuh; instantiated per dtype in bnlstm_*.cu),
// called by the CUDA time loops (loops_cuda.cpp).
#pragma once

#include <cuda_runtime.h>

#include "bnlstm.h"

namespace bnlstm {

// One launch per step on `stream`: n rows run at step t, n_next at t+1 (0 after the last step).
// factor < 0: normalise with running row `row` (evaluation, or
// fewer than 2 rows); else batch statistics, moving that row by `factor` (by p.factors[t] where
// given) towards them.
template <typename S>
void launch_fwd_step(const FwdParams& p, int t, int n, int n_next, int row, double factor,
                     cudaStream_t stream);

// Step t of the reverse loop: n rows run at t, n_next at t+1 (0 after the last step).
template <typename S>
void launch_bwd_step(const BwdParams& p, int t, int n, int n_next, bool use_batch,
                     cudaStream_t stream);

}  // namespace bnlstm
