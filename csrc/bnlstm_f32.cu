// float instantiations of the step kernels (one file per dtype: nvcc compiles them in parallel).
#include "launch.h"
#include "persistent_bwd.cuh"
#include "persistent_fwd.cuh"
#include "step_bwd.cuh"
#include "step_fwd.cuh"

namespace bnlstm {
template void launch_fwd_step<float>(const FwdParams&, int, int, int, int, double, cudaStream_t);
template cudaError_t plan_persistent_fwd<float>(int64_t, PersistentPlan&);
template cudaError_t launch_persistent_fwd<float>(const FwdParams&, const PersistentPlan&, const int*,
                                                const int*, const double*, int, unsigned*,
                                                cudaStream_t);
template void launch_bwd_step<float>(const BwdParams&, int, int, int, bool, cudaStream_t);
template cudaError_t plan_persistent_bwd<float>(int64_t, PersistentPlan&);
template cudaError_t launch_persistent_bwd<float>(const BwdParams&, const PersistentPlan&,
                                                const int*, const int*, int, unsigned*,
                                                cudaStream_t);
}  // namespace bnlstm
