// The step kernels of every dtype, compiled by the host compiler for the emulator: the very
// instantiation files nvcc compiles (float, double, __half, __nv_bfloat16).
#include "cuda_emu.h"

#include "../bnlstm_bf16.cu"
#include "../bnlstm_f16.cu"
#include "../bnlstm_f32.cu"
#include "../bnlstm_f64.cu"
