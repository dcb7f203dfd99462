// Argument checks shared by the ops' C++ entry points (bnlstm.cpp, input_norm_cpu.cpp): each
// names the op and the argument, and says what was expected.
#pragma once

#include <ATen/ATen.h>

namespace bnlstm {

// t has `shape`, like's device and (same_dtype) like's dtype.
inline void check_like(const char* op, const char* name, const at::Tensor& t,
                       const at::Tensor& like, at::IntArrayRef shape, bool same_dtype = true) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(),
              ", expected ", like.device(), " like the other tensors");
  TORCH_CHECK(!same_dtype || t.scalar_type() == like.scalar_type(), op, ": ", name,
              " has dtype ", t.scalar_type(), ", expected ", like.scalar_type());
}

// Running rows per step: within [1, B] and non-increasing (all 0 for an empty batch).
inline void check_batch_sizes(const char* op, at::IntArrayRef batch_sizes, int64_t T, int64_t B) {
  TORCH_CHECK(static_cast<int64_t>(batch_sizes.size()) == T, op, ": batch_sizes must have T = ",
              T, " entries, got ", batch_sizes.size());
  const int64_t least = B > 0 ? 1 : 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = batch_sizes[t], before = t == 0 ? B : batch_sizes[t - 1];
    TORCH_CHECK(n >= least && n <= before, op, ": batch_sizes must be non-increasing within [",
                least, ", B = ", B, "], got ", n, " at step ", t);
  }
}

}  // namespace bnlstm
