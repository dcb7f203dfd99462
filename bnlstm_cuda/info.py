"""`python -m bnlstm_cuda.info`: what this install runs here, and whether it computes the right
numbers here. Versions; every backend, whether it runs and why not; on a GPU the path the cpp
backend's forward takes at a few sizes (persistent or per step, and why); then bnlstm_cuda.selfcheck
for each runnable backend on each device (cpu; cuda when present) in float64 where the backend
computes it natively, float32, and float16/bfloat16 on a GPU. Exit status 1 on a mismatch."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys

import torch

import bnlstm_cuda

from . import backends, selfcheck


def versions() -> dict[str, str]:
    """The versions a bug report needs."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out = {"bnlstm_cuda": bnlstm_cuda.__version__, "python": platform.python_version(),
           "torch": torch.__version__, "triton": triton_version,
           "CUDA (torch)": torch.version.cuda or "none (a CPU build of torch)",
           "cuDNN": str(cudnn) if cudnn else "none",
           "torch's compiler": _torch_compiler(), "nvcc": _nvcc()}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            out[f"GPU {i}"] = f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})"
    else:
        out["GPU"] = "none"
    return out


def _torch_compiler() -> str:
    found = re.search(r"(GCC [\d.]+|clang [\d.]+|MSVC \d+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def _nvcc() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "not found"
    found = re.search(r"release ([\d.]+)", subprocess.run([nvcc, "--version"],
                                                          capture_output=True, text=True).stdout)
    return found.group(1) if found else "unknown"


def devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def dtypes_to_check(module, device: torch.device) -> list[torch.dtype]:
    """float64 where computed natively, float32, and the half types on a GPU."""
    out = [torch.float64] if torch.float64 in module.dtypes(device) else []
    out.append(torch.float32)
    if device.type == "cuda":
        out += [torch.float16, torch.bfloat16]
    return out


# hidden sizes whose CUDA loop paths main() reports: the benchmark's and the paper's
PATH_SIZES = (100, 256, 512, 768, 1024)


def loop_paths(ops, dtypes=(torch.float32, torch.bfloat16), sizes=PATH_SIZES) -> list[str]:
    """Which path the cpp backend's CUDA forward and backward of one layer take on the current
    device, per dtype and hidden size (`ops.forward_path`, `ops.backward_path`: persistent in one
    cooperative launch, or per step and why)."""
    return [f"{str(dtype)[6:]:9} H={H:<5} {name:8} {path(dtype, H)}"
            for dtype in dtypes for H in sizes
            for name, path in (("forward", ops.forward_path), ("backward", ops.backward_path))]


def main() -> int:
    print("versions")
    for name, value in versions().items():
        print(f"  {name:18} {value}")
    print("\nbackends")
    runnable = []
    for name, (ok, reason) in backends.available_backends().items():
        print(f"  {name:8} {'runs' if ok else 'no':5} {reason}")
        if ok:
            runnable.append(name)
    if torch.cuda.is_available() and hasattr(torch.ops.bnlstm, "backward_path"):
        print("\nCUDA loops of the cpp backend on this GPU, one layer")
        for line in loop_paths(torch.ops.bnlstm):
            print(f"  {line}")
    print(f"\ncheck against bnlstm_cuda.reference (T={max(selfcheck.LENGTHS)}, "
          f"B={len(selfcheck.LENGTHS)} packed, H={selfcheck.HIDDEN}, training; output, final "
          "states, every gradient, running buffers)")
    print(f"  {'backend':8} {'device':7} {'dtype':9} {'result':7} {'worst':17} {'error':>9} "
          f"{'bound':>9}")
    failed = 0
    for name in runnable:
        for device in devices():
            try:
                module = backends.resolve(name, device)
            except ValueError as why:  # runs here, but not on this device's tensors
                print(f"  {name:8} {device.type:7} {'':9} {'skip':7} {why}")
                continue
            for dtype in dtypes_to_check(module, device):
                r = selfcheck.check(name, device, dtype)
                failed += not r.ok
                print(f"  {name:8} {device.type:7} {str(dtype)[6:]:9} "
                      f"{'ok' if r.ok else 'WRONG':7} {r.worst:17} {r.error:9.2e} {r.bound:9.2e}")
    print(f"\n{failed} mismatch(es)" if failed else "\nevery runnable backend matches here")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
