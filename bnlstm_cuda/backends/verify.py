"""The guard behind "auto": a fused backend is trusted with a (device, dtype) only once it has
passed bnlstm_cuda.selfcheck there in this process, because the fused kernels are proven in the
Triton interpreter and in C++ on the CPU, not yet on every GPU. A failure warns once and "auto"
moves on to the next backend. BNLSTM_VERIFY=0 skips the check."""

from __future__ import annotations

import os
import warnings

import torch

_VERDICTS: dict[tuple[str, torch.device, torch.dtype], bool] = {}


def trusted(module, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether "auto" may hand `module` tensors of `dtype` on `device`: checked the first time
    in a process (never while torch.compile traces: the check runs eagerly)."""
    if torch.compiler.is_compiling() or os.environ.get("BNLSTM_VERIFY", "1") == "0":
        return True
    key = (module.name, device, dtype)
    if key not in _VERDICTS:
        _VERDICTS[key] = _check(module, device, dtype)
    return _VERDICTS[key]


def _check(module, device: torch.device, dtype: torch.dtype) -> bool:
    from .. import selfcheck  # it imports the registry, which imports this module

    # a backend that runs float64 in float32 is checked in float32: the float64 bound is not
    # meant for it
    if dtype == torch.float64 and dtype not in module.dtypes(device):
        dtype = torch.float32
    try:
        with warnings.catch_warnings():  # what the check's own calls warn about is not the user's
            warnings.simplefilter("ignore")
            result = selfcheck.check(module.name, device, dtype)
    except Exception as error:  # a kernel that does not even run here is not trusted either
        _warn(module, device, dtype, f"the check raised {type(error).__name__}: {error}")
        return False
    if not result.ok:
        _warn(module, device, dtype, f"{result.worst} is off by {result.error:.2e} relative "
              f"to the reference (at most {result.bound:.2e})")
    return result.ok


def _warn(module, device, dtype, what: str) -> None:
    from ..info import versions

    found = versions()
    where = ", ".join(f"{name} {found[name]}" for name in ("torch", "triton", "CUDA (torch)"))
    gpu = found.get(f"GPU {device.index or 0}") if device.type == "cuda" else None
    warnings.warn(
        f"bnlstm_cuda: backend {module.name!r} failed its first-use check on {device} in "
        f"{dtype}: {what}; \"auto\" uses the next backend instead ({where}"
        f"{', ' + gpu if gpu else ''}). Please report it with the output of "
        "`python -m bnlstm_cuda.info`; BNLSTM_VERIFY=0 skips the check.", RuntimeWarning,
        stacklevel=2)
