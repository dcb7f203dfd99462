"""What the two fused backends (Triton, CUDA C++) share: the buffers their backward reads, the
accumulator dtype, and the per-step update weights as plain numbers for the launches."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Saved(NamedTuple):
    """What the backward kernels read (accumulator dtype unless noted): 9H values per step and
    row, beside the output the Function keeps."""

    xw: Tensor  # (T, B, 4H) x W_ih^T, the layer's dtype
    hw: Tensor  # (T, B, 4H) raw h_{t-1} W_hh^T
    cell: Tensor  # (T+1, B, H) c0 then c_t
    stat_ih: Tensor  # (T, 2, 4H) mean and rstd used at step t
    stat_hh: Tensor  # (T, 2, 4H)
    stat_c: Tensor  # (T, 2, H)


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """Statistics, cell state and products accumulate in float32 (float64 for float64 layers,
    which exist to check the kernels' math to float64 rounding); so do the running statistics."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def host_factors(factors) -> list[float]:
    """Per-step update weights as launch arguments (-1: the step normalises with its running
    row); weights given as 0-dim tensors (a cumulative average) are read in one transfer."""
    lazy = [f for f in factors if isinstance(f, Tensor)]
    values = iter(torch.stack(lazy).tolist() if lazy else [])
    return [-1.0 if f is None else next(values) if isinstance(f, Tensor) else float(f)
            for f in factors]
