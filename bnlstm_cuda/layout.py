"""Sequence layout shared by the module and the functional op: time-major padded tensors whose
batch is sorted by decreasing length, so the sequences running at step t are a prefix of
batch_sizes[t] rows (the layout of a PackedSequence, and the one the step kernels want)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .device_numbers import device_numbers


def batch_sizes_of(lengths: Optional[list[int]], T: int, B: int) -> list[int]:
    """Number of running sequences at each step, in O(T + B): it runs on every layer and
    direction of every call (lengths in [1, T])."""
    if lengths is None:
        return [B] * T
    ending = [0] * (T + 1)  # ending[t]: sequences whose last step is t - 1
    for n in lengths:
        ending[n] += 1
    sizes, running = [], len(lengths)
    for t in range(T):
        running -= ending[t]
        sizes.append(running)
    return sizes


def reverse_padded(x: Tensor, lengths: Optional[list[int]]) -> Tensor:
    """Reverse each sequence of x (T, B, F) within its own length; padding stays where it is.
    Its own inverse, and differentiable."""
    if lengths is None or all(n == x.shape[0] for n in lengths):
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    n = device_numbers(lengths, torch.int64, x.device).unsqueeze(0)
    index = torch.where(t < n, n - 1 - t, t)
    return x.gather(0, index.unsqueeze(-1).expand_as(x))
