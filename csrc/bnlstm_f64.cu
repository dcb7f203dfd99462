// double instantiations of the step kernels (one file per dtype: nvcc compiles them in parallel).
#include "launch.h"
#include "persistent_bwd.cuh"
#include "persistent_fwd.cuh"

namespace bnlstm {
template cudaError_t plan_step_fwd<double>(int64_t, PersistentPlan&);
template void launch_step_fwd<double>(const FwdParams&, const PersistentPlan&, const int*, const int*,
                                  const double*, int, cudaStream_t);
template cudaError_t plan_persistent_fwd<double>(int64_t, PersistentPlan&);
template cudaError_t launch_persistent_fwd<double>(const FwdParams&, const PersistentPlan&, const int*,
                                                const int*, const double*, int, unsigned*,
                                                cudaStream_t);
template cudaError_t plan_step_bwd<double>(int64_t, PersistentPlan&);
template void launch_step_bwd<double>(const BwdParams&, const PersistentPlan&, const int*, const int*,
                                  int, cudaStream_t);
template cudaError_t plan_persistent_bwd<double>(int64_t, PersistentPlan&);
template cudaError_t launch_persistent_bwd<double>(const BwdParams&, const PersistentPlan&,
                                                const int*, const int*, int, unsigned*,
                                                cudaStream_t);
}  // namespace bnlstm
