// float instantiations of the step kernels (one file per dtype: nvcc compiles them in parallel).
#include "launch.h"
#include "step_bwd.cuh"
#include "step_fwd.cuh"

namespace bnlstm {
template void launch_fwd_step<float>(const FwdParams&, int, int, int, int, double, cudaStream_t);
template void launch_bwd_step<float>(const BwdParams&, int, int, int, bool, cudaStream_t);
}  // namespace bnlstm
