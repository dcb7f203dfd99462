"""Builds the C++ extension bnlstm_cuda._C (csrc/) beside the pure-Python package; metadata lives
in pyproject.toml. Its CPU kernels build wherever torch and a C++ compiler are present (the CPU
build of torch included); its CUDA kernels as well with a CUDA build of torch and a CUDA
toolkit. Without a compiler the package installs without it (and says why); the other
backends work either way. Install with `pip install --no-build-isolation -e .` so the build
sees the installed torch.

Environment: BNLSTM_SKIP_BUILD=1 skips the extension; BNLSTM_SKIP_CUDA_BUILD=1 builds the CPU
kernels only; BNLSTM_CUDA_ARCHS, else torch's own TORCH_CUDA_ARCH_LIST, else "8.0;9.0" picks
the GPU architectures.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys

from setuptools import setup

DEFAULT_ARCHS = "8.0;9.0"
CPU_SOURCES = ["csrc/bnlstm.cpp", "csrc/loops_cpu.cpp", "csrc/input_norm_cpu.cpp"]
CUDA_SOURCES = ["csrc/loops_cuda.cpp", "csrc/bnlstm_f32.cu", "csrc/bnlstm_f16.cu",
                "csrc/bnlstm_bf16.cu", "csrc/bnlstm_f64.cu"]
# -fopenmp: at::parallel_for is inline OpenMP; the loops must be compiled with it to run on
# several threads. No errno and no trapping flags (as torch builds itself): sqrt and selects
# need no branch, so the loops over features vectorise; IEEE results are unchanged.
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
# -v: ptxas prints each kernel's registers, spills and shared memory in the log (tools/
# cuda_report.py compiles with these too)
NVCC_FLAGS = ["-O3", "-Xptxas=-v", "-lineinfo"]


def _say(message: str):
    print(f"bnlstm_cuda: {message}", file=sys.stderr)


def _mkl_exported(torch) -> bool:
    """Whether torch's libtorch_cpu exports the MKL BLAS the CPU loops call (x86 builds do);
    otherwise their GEMMs go through at::mm_out."""
    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        handle = ctypes.CDLL(lib)
    except OSError:
        return False
    return all(hasattr(handle, name)
               for name in ("sgemm_", "dgemm_", "MKL_Set_Num_Threads_Local"))


def _why_no_cuda(torch, cuda_home) -> str | None:
    if os.environ.get("BNLSTM_SKIP_CUDA_BUILD", "0") not in ("", "0"):
        return "BNLSTM_SKIP_CUDA_BUILD is set"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    if cuda_home is None:
        return "no CUDA toolkit (set CUDA_HOME or put nvcc on PATH)"
    return None


def extension_build():
    """(ext_modules, cmdclass) for setup(): the extension (CPU kernels, and CUDA kernels where
    they can build), or nothing with the reason."""
    if os.environ.get("BNLSTM_SKIP_BUILD", "0") not in ("", "0"):
        _say("not building the C++ extension: BNLSTM_SKIP_BUILD is set")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import (
            CUDA_HOME,
            BuildExtension,
            CppExtension,
            CUDAExtension,
        )
    except ImportError as error:
        _say(f"not building the C++ extension: torch is not importable at build time ({error}); "
             "install with pip install --no-build-isolation")
        return [], {}
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        _say(f"not building the C++ extension: no C++ compiler ({compiler!r} is not on PATH)")
        return [], {}
    macros = [("BNLSTM_WITH_MKL", None)] if _mkl_exported(torch) else []
    why_no_cuda = _why_no_cuda(torch, CUDA_HOME)
    if why_no_cuda is not None:
        _say(f"building the C++ extension with the CPU kernels only: {why_no_cuda}")
        extension = CppExtension("bnlstm_cuda._C", CPU_SOURCES, define_macros=macros,
                                 extra_compile_args=CXX_FLAGS, extra_link_args=["-fopenmp"])
        return [extension], {"build_ext": BuildExtension}
    archs = (os.environ.get("BNLSTM_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST")
             or DEFAULT_ARCHS)
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # torch turns it into -gencode flags
    _say(f"building the C++ extension with CPU kernels and CUDA kernels for {archs} "
         f"with {CUDA_HOME}")
    extension = CUDAExtension(
        "bnlstm_cuda._C",
        CPU_SOURCES + CUDA_SOURCES,
        define_macros=[*macros, ("BNLSTM_WITH_CUDA", None)],
        extra_compile_args={
            "cxx": CXX_FLAGS,
            "nvcc": NVCC_FLAGS,
        },
        extra_link_args=["-fopenmp"],
    )
    return [extension], {"build_ext": BuildExtension}


if __name__ == "__main__":
    ext_modules, cmdclass = extension_build()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
