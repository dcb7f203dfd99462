// double instantiations of the step kernels (one file per dtype: nvcc compiles them in parallel).
#include "launch.h"
#include "persistent_bwd.cuh"
#include "persistent_fwd.cuh"
#include "step_bwd.cuh"
#include "step_fwd.cuh"

namespace bnlstm {
template void launch_fwd_step<double>(const FwdParams&, int, int, int, int, double, cudaStream_t);
template cudaError_t plan_persistent_fwd<double>(int64_t, PersistentPlan&);
template cudaError_t launch_persistent_fwd<double>(const FwdParams&, const PersistentPlan&, const int*,
                                                const int*, const double*, int, unsigned*,
                                                cudaStream_t);
template void launch_bwd_step<double>(const BwdParams&, int, int, int, bool, cudaStream_t);
template cudaError_t plan_persistent_bwd<double>(int64_t, PersistentPlan&);
template cudaError_t launch_persistent_bwd<double>(const BwdParams&, const PersistentPlan&,
                                                const int*, const int*, int, unsigned*,
                                                cudaStream_t);
}  // namespace bnlstm
