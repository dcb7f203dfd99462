// The CUDA launchers (persistent_fwd.cuh, persistent_bwd.cuh; instantiated per dtype in
// bnlstm_*.cu), called by the CUDA time loops (loops_cuda.cpp).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "bnlstm.h"

namespace bnlstm {

// How the forward or the backward of a layer with H units runs on the current device: persistent
// (one cooperative launch of `blocks` blocks of `threads` threads, each owning `units` hidden
// units with `shared_bytes` of dynamic shared memory), or per step, `why` (plan_step_* then
// gives the per-step launch's blocks, threads, units and shared memory).
struct PersistentPlan {
  bool persistent = false;
  int units = 0, blocks = 0, threads = 0;
  size_t shared_bytes = 0;
  const char* why = "";
};

template <typename S>
cudaError_t plan_persistent_fwd(int64_t H, PersistentPlan& plan);

// Every step of the forward in one cooperative launch of `plan` on `stream`: running rows n[t]
// (n[T] = 0), statistics row rows[t], update weight factors[t] (< 0: normalise with the row,
// else batch statistics moving it by that weight, or by p.factors[t] where given), all in
// device memory; arrivals: one zeroed unsigned of device memory (the grid barrier's count).
// cudaErrorCooperativeLaunchTooLarge: the device refused the grid and nothing ran.
template <typename S>
cudaError_t launch_persistent_fwd(const FwdParams& p, const PersistentPlan& plan, const int* n,
                                  const int* rows, const double* factors, int T,
                                  unsigned* arrivals, cudaStream_t stream);

// The forward's launch per step where it does not run persistent: plan's units, blocks, threads
// and shared_bytes (W_hh streamed; the rest of plan kept). cudaErrorInvalidValue: no block
// fits the device.
template <typename S>
cudaError_t plan_step_fwd(int64_t H, PersistentPlan& plan);

// Step t of the forward in one ordinary launch of a plan_step_fwd plan; n, rows and factors as
// launch_persistent_fwd's.
template <typename S>
void launch_step_fwd(const FwdParams& p, const PersistentPlan& plan, const int* n,
                     const int* rows, const double* factors, int t, cudaStream_t stream);

template <typename S>
cudaError_t plan_persistent_bwd(int64_t H, PersistentPlan& plan);

// Every step of the reverse loop in one cooperative launch of `plan` on `stream`: running rows
// n[t] (n[T] = 0) and use_batch[t] (0 or 1: step t used batch statistics), in device memory;
// arrivals and the refusal as launch_persistent_fwd's.
template <typename S>
cudaError_t launch_persistent_bwd(const BwdParams& p, const PersistentPlan& plan, const int* n,
                                  const int* use_batch, int T, unsigned* arrivals,
                                  cudaStream_t stream);

// The backward's plan and launch per step, as the forward's.
template <typename S>
cudaError_t plan_step_bwd(int64_t H, PersistentPlan& plan);
template <typename S>
void launch_step_bwd(const BwdParams& p, const PersistentPlan& plan, const int* n,
                     const int* use_batch, int t, cudaStream_t stream);

}  // namespace bnlstm
