"""Backend registry: each backend is a module with `name`, `available() -> (ok, reason)`,
`forward_loop` and `backward_loop` (see backends/torch_ops.py for the contract)."""

from __future__ import annotations

import torch

from . import torch_ops

_REGISTRY = {m.name: m for m in (torch_ops,)}
NAMES = ("auto", *_REGISTRY)


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every backend known to this install, with whether it can run here and why (not)."""
    return {name: module.available() for name, module in _REGISTRY.items()}


def resolve(name: str, device: torch.device):
    """The backend module for `name` on `device`; "auto" picks the fastest one that can run."""
    if name == "auto":
        return torch_ops
    if name not in _REGISTRY:
        raise ValueError(f"backend: expected one of {list(NAMES)}, got {name!r}")
    ok, reason = _REGISTRY[name].available()
    if not ok:
        usable = [n for n, (good, _) in available_backends().items() if good]
        raise RuntimeError(f"backend {name!r} is not available: {reason}; available: {usable}")
    return _REGISTRY[name]
