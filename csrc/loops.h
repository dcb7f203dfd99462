// The time loops each device supplies behind the ops. bnlstm.cpp checks every argument and
// allocates every output first; a loop runs the steps over the buffers the params point at
// (forward t = 0 .. T-1, backward t = T-1 .. 0) and updates the running rows in place. A
// forward loop writes every element of cell's rows 1 .. T and, where a backward will read it
// (p.keep_hw; the CUDA loops always), of hw: rows past a step's running rows are zero there
// (the op's outputs are then defined, run to run). Without keep_hw the CPU loops leave hw
// unwritten: an inference forward neither stores nor pages in a (T, B, 4H) buffer.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "bnlstm.h"

namespace bnlstm {

// Per-step host data of a forward: running rows (a non-increasing prefix of the batch), the
// running-statistics row each step reads or updates, and its update weight (< 0: normalise
// with the row; p.factors[t] instead where p.factors is given).
struct ForwardPlan {
  at::IntArrayRef batch_sizes;
  at::IntArrayRef rows;
  at::ArrayRef<double> factors;
};

// Per-step host data of a backward: running rows, and whether the step used batch statistics.
struct BackwardPlan {
  at::IntArrayRef batch_sizes;
  const c10::List<bool>& use_batch;
};

// steps: a (T, B, H) tensor in the layer's dtype (forward: the output's steps; backward: its
// gradient) whose dtype and device pick the kernels and whose first size is T.
using ForwardSteps = void (*)(const FwdParams& p, const at::Tensor& steps,
                              const ForwardPlan& plan);
using BackwardSteps = void (*)(const BwdParams& p, const at::Tensor& steps,
                               const BackwardPlan& plan);

// loops_cpu.cpp: one GEMM and one fused pass per step and block of hidden units
void forward_steps_cpu(const FwdParams& p, const at::Tensor& steps, const ForwardPlan& plan);
void backward_steps_cpu(const BwdParams& p, const at::Tensor& steps, const BackwardPlan& plan);

// loops_cuda.cpp: on the current stream of the tensors' device, each loop persistent where
// the device holds its grid, else one kernel launch per step; forward_path_cuda and
// backward_path_cuda say which path a layer of H units in `dtype` takes on the current device,
// and why.
std::string forward_path_cuda(at::ScalarType dtype, int64_t H);
std::string backward_path_cuda(at::ScalarType dtype, int64_t H);
// Lets the loops run persistent (on, the default) or only per step; returns the previous value.
bool use_persistent_cuda(bool on);
void forward_steps_cuda(const FwdParams& p, const at::Tensor& steps, const ForwardPlan& plan);
void backward_steps_cuda(const BwdParams& p, const at::Tensor& steps, const BackwardPlan& plan);

}  // namespace bnlstm
