"""tools/cuda_report.py: its parsers and rules on ptxas and cuobjdump output captured from real
compiles (nvcc 13.0, sm_90), and one real compile of csrc/bnlstm_f32.cu where nvcc is here."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "cuda_report", os.path.join(ROOT, "tools", "cuda_report.py"))
cuda_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_report)

# csrc/bnlstm_f16.cu's ptxas -v (two of its kernels), then a kernel that spills and one whose
# __noinline__ device function's properties follow its own
PTXAS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN6bnlstm15bwd_step_kernelI6__halfEEvNS_9BwdParamsEiiib' for 'sm_90'
ptxas info    : Function properties for _ZN6bnlstm15bwd_step_kernelI6__halfEEvNS_9BwdParamsEiiib
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 62 registers, used 1 barriers, 11520 bytes smem
ptxas info    : Compile time = 135.256 ms
ptxas info    : Compiling entry function '_ZN6bnlstm21persistent_fwd_kernelI6__halfEEvNS_9FwdParamsENS_9StepTableEiiPj' for 'sm_90'
ptxas info    : Function properties for _ZN6bnlstm21persistent_fwd_kernelI6__halfEEvNS_9FwdParamsENS_9StepTableEiiPj
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 84 registers, used 1 barriers
ptxas info    : Compiling entry function '_Z12spill_kernelPKfPfi' for 'sm_90'
ptxas info    : Function properties for _Z12spill_kernelPKfPfi
    200 bytes stack frame, 360 bytes spill stores, 384 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 200 bytes cumulative stack size
ptxas info    : Compiling entry function '_Z12outer_kernelPKfPf' for 'sm_90'
ptxas info    : Function properties for _Z12outer_kernelPKfPf
    32 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 18 registers, used 0 barriers, 32 bytes cumulative stack size
ptxas info    : Compile time = 4.708 ms
ptxas info    : Function properties for _Z6helperPKfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""  # noqa: E501

RESOURCES = """\

Resource usage:
 Common:
  GLOBAL:0
 Function _ZN6bnlstm15bwd_step_kernelI6__halfEEvNS_9BwdParamsEiiib:
  REG:62 STACK:0 SHARED:12544 LOCAL:0 CONSTANT[0]:693 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z12spill_kernelPKfPfi:
  REG:32 STACK:200 SHARED:0 LOCAL:0 CONSTANT[0]:548 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

# cuobjdump -sass lines: a half FMA on the MMA pipe (not a tensor-core op), WMMA's HMMA, spills
SASS = """\
\t\tFunction : _ZN6bnlstm15bwd_step_kernelI6__halfEEvNS_9BwdParamsEiiib
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*08c0*/                   HFMA2.MMA R7, -RZ, RZ, 0, 0 ;                                    /* 0x00000000ff077435 */
\t\tFunction : _Z11wmma_kernelPK6__halfS1_Pf
        /*0160*/                   HMMA.16816.F32 R16, R4.reuse, R12, RZ ;          /* 0x0000000c0410723c */
        /*0170*/                   HMMA.16816.F32 R12, R4, R14, RZ ;                /* 0x0000000e040c723c */
\t\tFunction : _Z12spill_kernelPKfPfi
        /*0230*/                   STL [R1+0x50], R25 ;                           /* 0x0000501901007387 */
        /*0250*/                   STL.64 [R1+0x4c], R24 ;                        /* 0x00004c1801007387 */
        /*0300*/                   LDL R3, [R1+0x50] ;                            /* 0x0000501001037983 */
"""  # noqa: E501


def test_parse_ptxas():
    kernels = cuda_report.parse_ptxas(PTXAS)
    assert list(kernels) == ["_ZN6bnlstm15bwd_step_kernelI6__halfEEvNS_9BwdParamsEiiib",
                             "_ZN6bnlstm21persistent_fwd_kernelI6__halfEEvNS_9FwdParamsENS_9StepTableEiiPj",
                             "_Z12spill_kernelPKfPfi", "_Z12outer_kernelPKfPf"]  # fmt: skip
    bwd, persistent, spill, outer = kernels.values()
    assert bwd == dict(regs=62, stack=0, spill_stores=0, spill_loads=0, smem=11520)
    assert persistent["regs"] == 84 and persistent["smem"] == 0
    assert spill == dict(regs=32, stack=200, spill_stores=360, spill_loads=384, smem=0)
    assert outer["stack"] == 32  # not the device function's 0 that follows


def test_parse_resources():
    usage = cuda_report.parse_resources(RESOURCES)
    assert usage["_ZN6bnlstm15bwd_step_kernelI6__halfEEvNS_9BwdParamsEiiib"] == dict(
        REG=62, STACK=0, SHARED=12544, LOCAL=0)
    assert usage["_Z12spill_kernelPKfPfi"]["STACK"] == 200


def test_parse_sass():
    sass = cuda_report.parse_sass(SASS)
    assert sass == {"_ZN6bnlstm15bwd_step_kernelI6__halfEEvNS_9BwdParamsEiiib":
                    {"mma": 0, "ldl_stl": 0},
                    "_Z11wmma_kernelPK6__halfS1_Pf": {"mma": 2, "ldl_stl": 0},
                    "_Z12spill_kernelPKfPfi": {"mma": 0, "ldl_stl": 3}}


def _row(**fields):
    return dict(dict(kernel="bnlstm::fwd_step_kernel<double>", dtype="f64", spill=0, stack=0,
                     local=0, ldl_stl=0, mma=0), **fields)


@pytest.mark.parametrize("field", ["spill", "stack", "local", "ldl_stl"])
def test_any_local_memory_fails(field):
    assert cuda_report.problems(_row()) == []
    assert cuda_report.problems(_row(**{field: 4})) == ["spills / local memory"]


def test_tensor_cores_required_for_fp32_bf16_fp16():
    for dtype, kernel in (("bf16", "bnlstm::fwd_step_kernel<__nv_bfloat16>"),
                          ("f16", "bnlstm::fwd_step_kernel<__half>"),
                          ("f32", "bnlstm::fwd_step_kernel<float>")):
        assert cuda_report.problems(_row(dtype=dtype, kernel=kernel)) == ["no tensor cores"]
        assert cuda_report.problems(_row(dtype=dtype, kernel=kernel, mma=8)) == []
    # float64 is the check: DFMA, no tensor cores asked of it
    assert cuda_report.problems(_row(dtype="f64", kernel="bnlstm::fwd_step_kernel<double>")) == []


def test_names():
    name = cuda_report.short_name(
        "void bnlstm::fwd_step_kernel<__half>(bnlstm::FwdParams, int, int, int, int, double)")
    assert name == "bnlstm::fwd_step_kernel<__half>"
    assert cuda_report.base_name(name) == "fwd_step_kernel"
    assert cuda_report.dtype_of("csrc/bnlstm_bf16.cu") == "bf16"


NVCC = os.path.join(cuda_report.CUDA_HOME, "bin", "nvcc")


@pytest.mark.skipif(not os.path.exists(NVCC), reason=f"no nvcc at {NVCC} (set CUDA_HOME)")
def test_real_compile_f32():
    """The report on csrc/bnlstm_f32.cu: its two kernels, sane registers, no spills, and a
    launch for each at the first GPU shape."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "cuda_report.py"),
                           "--sources", os.path.join(ROOT, "csrc", "bnlstm_f32.cu")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    kernels, launches = done.stdout.split("\nBlocks per launch")
    for kernel in ("persistent_fwd_kernel", "persistent_bwd_kernel"):
        row = re.search(rf"\| bnlstm::{kernel}<float> +\| f32 +\| +(\d+) \| +0 \| +0 \| +0 "
                        rf"\| +0 \|", kernels)
        assert row is not None, kernels
        assert 16 <= int(row[1]) <= 255
    fastrnns = next(line for line in launches.splitlines() if "fastrnns default" in line)
    assert "?" not in fastrnns and re.search(r"\| (persistent|per-step)", fastrnns), fastrnns
