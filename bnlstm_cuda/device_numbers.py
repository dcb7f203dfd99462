"""Per-step numbers (batch sizes, running rows, update weights, lengths) as a tensor on the device.

A plain copy from host memory makes the host wait for the device (torch synchronises the
stream after a copy from pageable memory), and CUDA graph capture refuses it. So eagerly the
numbers go through pinned memory without blocking (the caching host allocator keeps the buffer
until its copy has run); while a graph is being captured they are built on the device instead,
one fill or arange per run of values that rise by a constant step (a pinned buffer would be read
again at every replay, long after it was freed): per-call constants, rebuilt alike by each
replay.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def device_numbers(values: Sequence, dtype: torch.dtype, device: torch.device) -> Tensor:
    """values as a (len(values),) tensor of dtype on device (see above). While torch.compile
    traces, a plain tensor: the compiled graph holds it as a constant."""
    if device.type != "cuda" or torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    if torch.cuda.is_current_stream_capturing():
        return from_runs(values, dtype, device)
    return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)


def from_runs(values: Sequence, dtype: torch.dtype, device: torch.device) -> Tensor:
    """values built on the device from runs: equal values (any dtype), or integers that rise by
    one constant step (running rows, t + start_step, then the last row repeated)."""
    integral = not dtype.is_floating_point
    parts, i = [], 0
    while i < len(values):
        j = i + 1
        step = values[j] - values[i] if integral and j < len(values) else 0
        while j < len(values) and values[j] - values[j - 1] == step:
            j += 1
        if step:
            parts.append(torch.arange(values[i], values[i] + step * (j - i), step, dtype=dtype,
                                      device=device))
        else:
            parts.append(torch.full((j - i,), values[i], dtype=dtype, device=device))
        i = j
    if not parts:
        return torch.empty(0, dtype=dtype, device=device)
    return parts[0] if len(parts) == 1 else torch.cat(parts)
