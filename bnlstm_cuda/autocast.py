"""What BNLSTM does under torch.autocast: what nn.LSTM does. Input, states and weights in
float32, float16 or bfloat16 are cast to the autocast dtype (float64 is left alone, as autocast
leaves it) and the layer returns that dtype; inside, the half-precision path computes the
statistics and the cell state in float32, and the running statistics stay float32."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_CASTABLE = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_devices() -> frozenset:
    """Device types autocast exists on (is_autocast_enabled raises on the others, meta among
    them), asked once at import: torch.compile in torch 2.11 cannot trace the question itself.
    A name this torch does not know is simply left out; a renamed privateuse1 backend (say
    "npu") is asked under its own name."""
    names = ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "maia", "xla", "privateuseone",
             getattr(torch._C, "_get_privateuse1_backend_name", lambda: "privateuseone")())
    found = set()
    for kind in names:
        try:
            if torch.amp.is_autocast_available(kind):
                found.add(kind)
        except RuntimeError:  # a device type this torch does not know
            pass
    return frozenset(found)


_AUTOCAST_DEVICES = _autocast_devices()


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for tensors on `device`, or None when autocast is off there."""
    kind = device.type
    if kind in _AUTOCAST_DEVICES and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def as_autocast(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a tensor of `dtype` on `device` computes in: autocast's, where it applies."""
    amp = autocast_dtype(device)
    return amp if amp is not None and dtype in _CASTABLE else dtype


def cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return t.to(dtype) if t is not None and t.dtype in _CASTABLE else t
