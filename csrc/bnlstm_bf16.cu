// __nv_bfloat16 instantiations of the step kernels (one file per dtype: nvcc compiles them in parallel).
#include "launch.h"
#include "persistent_bwd.cuh"
#include "persistent_fwd.cuh"

namespace bnlstm {
template cudaError_t plan_step_fwd<__nv_bfloat16>(int64_t, PersistentPlan&);
template void launch_step_fwd<__nv_bfloat16>(const FwdParams&, const PersistentPlan&, const int*, const int*,
                                  const double*, int, cudaStream_t);
template cudaError_t plan_persistent_fwd<__nv_bfloat16>(int64_t, PersistentPlan&);
template cudaError_t launch_persistent_fwd<__nv_bfloat16>(const FwdParams&, const PersistentPlan&, const int*,
                                                const int*, const double*, int, unsigned*,
                                                cudaStream_t);
template cudaError_t plan_step_bwd<__nv_bfloat16>(int64_t, PersistentPlan&);
template void launch_step_bwd<__nv_bfloat16>(const BwdParams&, const PersistentPlan&, const int*, const int*,
                                  int, cudaStream_t);
template cudaError_t plan_persistent_bwd<__nv_bfloat16>(int64_t, PersistentPlan&);
template cudaError_t launch_persistent_bwd<__nv_bfloat16>(const BwdParams&, const PersistentPlan&,
                                                const int*, const int*, int, unsigned*,
                                                cudaStream_t);
}  // namespace bnlstm
