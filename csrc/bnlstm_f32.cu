// float instantiations of the step kernels (one file per dtype: nvcc compiles them in parallel).
#include "launch.h"
#include "persistent_bwd.cuh"
#include "persistent_fwd.cuh"

namespace bnlstm {
template cudaError_t plan_step_fwd<float>(int64_t, PersistentPlan&);
template void launch_step_fwd<float>(const FwdParams&, const PersistentPlan&, const int*, const int*,
                                  const double*, int, cudaStream_t);
template cudaError_t plan_persistent_fwd<float>(int64_t, PersistentPlan&);
template cudaError_t launch_persistent_fwd<float>(const FwdParams&, const PersistentPlan&, const int*,
                                                const int*, const double*, int, unsigned*,
                                                cudaStream_t);
template cudaError_t plan_step_bwd<float>(int64_t, PersistentPlan&);
template void launch_step_bwd<float>(const BwdParams&, const PersistentPlan&, const int*, const int*,
                                  int, cudaStream_t);
template cudaError_t plan_persistent_bwd<float>(int64_t, PersistentPlan&);
template cudaError_t launch_persistent_bwd<float>(const BwdParams&, const PersistentPlan&,
                                                const int*, const int*, int, unsigned*,
                                                cudaStream_t);
}  // namespace bnlstm
