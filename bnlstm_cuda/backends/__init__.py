"""Backend registry. A backend is a module with `name`, `dtypes(device)` (computed natively
there; others run in float32), `available() -> (ok, reason)`, `supports(device) -> reason or
None`, and the loops `forward_loop` / `backward_loop` (the contract is documented in
backends/torch_ops.py)."""

from __future__ import annotations

from typing import Optional

import torch

from . import cpp, torch_ops, triton_step, verify

# "auto" prefers the earlier on CUDA tensors: Triton first, as its kernels are the ones proven
# against the oracle (in the interpreter); the CUDA C++ kernels have yet to run on a GPU.
# Revisit with GPU measurements. On CPU tensors "auto" takes the C++ kernels where built.
_REGISTRY = {m.name: m for m in (triton_step, cpp, torch_ops)}
NAMES = ("auto", *_REGISTRY)


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every backend known to this install, with whether it can run here and why (not)."""
    return {name: module.available() for name, module in _REGISTRY.items()}


def resolve(name: str, device: torch.device, dtype: Optional[torch.dtype] = None):
    """The backend module for `name` on `device`; "auto" picks the first that runs there and,
    given the tensors' `dtype`, whose first-use check passes there (backends/verify.py). On CPU
    tensors "auto" never takes the Triton interpreter: it is for tests, not for work."""
    if name == "auto":
        for module in _REGISTRY.values():
            if (module.available()[0] and module.supports(device) is None
                    and not (module is triton_step and device.type == "cpu")
                    and (module is torch_ops or dtype is None
                         or verify.trusted(module, device, dtype))):
                return module
        return torch_ops
    if name not in _REGISTRY:
        raise ValueError(f"backend: expected one of {list(NAMES)}, got {name!r}")
    module = _REGISTRY[name]
    ok, reason = module.available()
    if ok:
        reason = module.supports(device)
    if not ok or reason is not None:
        usable = [n for n, (good, _) in available_backends().items() if good]
        raise ValueError(f"backend {name!r} cannot run on {device}: {reason}; "
                           f"available here: {usable}")
    return module
