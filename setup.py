"""Builds the CUDA extension bnlstm_cuda._C (csrc/) beside the pure-Python package; metadata
lives in pyproject.toml. Without a CUDA build of torch or a CUDA toolkit the package installs
without it (and says why); the other backends work either way. Install with
`pip install --no-build-isolation -e .` so the build sees the installed torch.

Environment: BNLSTM_SKIP_CUDA_BUILD=1 skips the extension; BNLSTM_CUDA_ARCHS, else torch's own
TORCH_CUDA_ARCH_LIST, else "8.0;9.0" picks the GPU architectures.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

DEFAULT_ARCHS = "8.0;9.0"
SOURCES = ["csrc/bnlstm.cpp", "csrc/bnlstm_f32.cu", "csrc/bnlstm_f16.cu", "csrc/bnlstm_bf16.cu",
           "csrc/bnlstm_f64.cu"]


def _skip(reason: str):
    print(f"bnlstm_cuda: not building the CUDA extension: {reason}", file=sys.stderr)
    return [], {}


def extension_build():
    """(ext_modules, cmdclass) for setup(): the CUDA extension, or nothing with the reason."""
    if os.environ.get("BNLSTM_SKIP_CUDA_BUILD", "0") not in ("", "0"):
        return _skip("BNLSTM_SKIP_CUDA_BUILD is set")
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as error:
        return _skip(f"torch is not importable at build time ({error}); "
                     "install with pip install --no-build-isolation")
    if torch.version.cuda is None:
        return _skip(f"torch {torch.__version__} is a CPU build")
    if CUDA_HOME is None:
        return _skip("no CUDA toolkit (set CUDA_HOME or put nvcc on PATH)")
    archs = (os.environ.get("BNLSTM_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST")
             or DEFAULT_ARCHS)
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # torch turns it into -gencode flags
    print(f"bnlstm_cuda: building the CUDA extension for {archs} with {CUDA_HOME}",
          file=sys.stderr)
    extension = CUDAExtension(
        "bnlstm_cuda._C",
        SOURCES,
        extra_compile_args={
            "cxx": ["-O3"],
            # -v: ptxas prints each kernel's registers, spills and shared memory in the log
            "nvcc": ["-O3", "-Xptxas=-v", "-lineinfo"],
        },
    )
    return [extension], {"build_ext": BuildExtension}


if __name__ == "__main__":
    ext_modules, cmdclass = extension_build()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
