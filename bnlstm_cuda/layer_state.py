"""The tensors one layer and direction works with, bundled so every layer of the stack passes them
the same way: the learnable weights and the per-step running statistics."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor


class LayerWeights(NamedTuple):
    """Learnable tensors of one layer and direction (H = hidden size, gates i, f, g, o)."""

    weight_ih: Tensor  # (4H, input_size)
    weight_hh: Tensor  # (4H, H)
    bias: Optional[Tensor]  # (4H,) or None
    gamma_ih: Tensor  # (4H,) scale of BN(x W_ih^T)
    gamma_hh: Tensor  # (4H,) scale of BN(h W_hh^T)
    gamma_c: Tensor  # (H,) scale of BN(c)
    beta_c: Tensor  # (H,) shift of BN(c)


class RunningStats(NamedTuple):
    """Per-step population statistics of one layer and direction; row t serves step t and row
    max_length-1 serves every later step. Updated in place in training."""

    mean_ih: Tensor  # (max_length, 4H)
    var_ih: Tensor  # (max_length, 4H), unbiased
    mean_hh: Tensor  # (max_length, 4H)
    var_hh: Tensor  # (max_length, 4H), unbiased
    mean_c: Tensor  # (max_length, H)
    var_c: Tensor  # (max_length, H), unbiased
    num_batches_tracked: Tensor  # (max_length,) int64: updates each row has had

    @property
    def max_length(self) -> int:
        return self.mean_ih.shape[0]


def step_plan(batch_sizes: list[int], max_length: int, training: bool) -> list[tuple[int, bool]]:
    """For each step: the running-statistics row it reads or updates, and whether it normalises
    with batch statistics (training with at least 2 running sequences; one sample has no batch
    variance, so such a step uses its running row and leaves it unchanged)."""
    return [(min(t, max_length - 1), training and n >= 2) for t, n in enumerate(batch_sizes)]


def update_counts(stats: RunningStats, plan: list[tuple[int, bool]], momentum: Optional[float]):
    """Count every update the plan makes, in one op, and return each step's weight for its new
    statistic (None where it reads its running row): momentum, or for a cumulative average
    (momentum None, as nn.BatchNorm) 1/count as a 0-dim tensor, so nothing waits on the device
    and torch.compile can trace it."""
    rows = [row for row, use_batch in plan if use_batch]
    if not rows:
        return [None] * len(plan)
    counts = stats.num_batches_tracked
    factors, seen = [], {}
    for row, use_batch in plan:
        if not use_batch:
            factors.append(None)
        elif momentum is not None:
            factors.append(momentum)
        else:
            seen[row] = seen.get(row, 0) + 1
            factors.append(1.0 / (counts[row] + seen[row]).double())
    index = torch.tensor(rows, device=counts.device)
    counts.index_add_(0, index, torch.ones_like(index, dtype=counts.dtype))
    return factors
