// The CUDA launchers (step_fwd.cuh, step_bwd.cuh, persistent_fwd.cuh, persistent_bwd.cuh;
// instantiated per dtype in bnlstm_*.cu), called by the CUDA time loops (loops_cuda.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

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

// How the forward or the backward of a layer with H units runs on the current device: persistent
// (one cooperative launch of `blocks` blocks of `threads` threads, each owning `units` hidden
// units with `shared_bytes` of dynamic shared memory), or per step, `why`.
struct PersistentPlan {
  bool persistent = false;
  int units = 0, blocks = 0, threads = 0;
  size_t shared_bytes = 0;
  const char* why = "";
};

template <typename S>
cudaError_t plan_persistent_fwd(int64_t H, PersistentPlan& plan);

// Every step of the forward in one cooperative launch of `plan` on `stream`: running rows n[t]
// (n[T] = 0), statistics row rows[t], update weight factors[t] (as launch_fwd_step's), all in
// device memory; arrivals: one zeroed unsigned of device memory (the grid barrier's count).
// cudaErrorCooperativeLaunchTooLarge: the device refused the grid and nothing ran.
template <typename S>
cudaError_t launch_persistent_fwd(const FwdParams& p, const PersistentPlan& plan, const int* n,
                                  const int* rows, const double* factors, int T,
                                  unsigned* arrivals, cudaStream_t stream);

template <typename S>
cudaError_t plan_persistent_bwd(int64_t H, PersistentPlan& plan);

// Every step of the reverse loop in one cooperative launch of `plan` on `stream`: running rows
// n[t] (n[T] = 0) and use_batch[t] (0 or 1, as launch_bwd_step's), in device memory; arrivals
// and the refusal as launch_persistent_fwd's.
template <typename S>
cudaError_t launch_persistent_bwd(const BwdParams& p, const PersistentPlan& plan, const int* n,
                                  const int* use_batch, int T, unsigned* arrivals,
                                  cudaStream_t stream);

}  // namespace bnlstm
