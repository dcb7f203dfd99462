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


def input_product(x: Tensor, weights: LayerWeights, out: Optional[Tensor] = None) -> Tensor:
    """x W_ih^T of every step as one GEMM ahead of the loop (T, B, 4H): the hoisted input
    product, which only the step's batch norm needs, not the recurrence; into `out` if given."""
    return torch.matmul(x, weights.weight_ih.t(), out=out)


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """Statistics, cell state and the input contribution accumulate in float32 (float64 for
    float64 layers, which exist to check the kernels' math to float64 rounding); so do the
    running statistics."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Steps(NamedTuple):
    """What every step of one call does, decided once per layer and direction before any loop
    (plan_steps) and shared by the input norm and the backend's loops."""

    batch_sizes: list[int]  # running rows per step (a non-increasing prefix of the batch)
    rows: list[int]  # the running-statistics row each step reads or updates
    batch_stats: list[bool]  # whether a step normalises with its batch statistics
    factors: list  # per step: None (reads its row), momentum, or a 0-dim tensor (1/count)


def plan_steps(batch_sizes: list[int], stats: RunningStats, training: bool,
               momentum: Optional[float], start_step: int = 0) -> Steps:
    """The steps of one call; counts their updates in stats.num_batches_tracked, so call it
    exactly once per layer, direction and call."""
    plan = step_plan(batch_sizes, stats.max_length, training, start_step)
    factors = update_counts(stats, plan, momentum)
    return Steps(list(batch_sizes), [row for row, _ in plan], [u for _, u in plan], factors)


def step_plan(batch_sizes: list[int], max_length: int, training: bool,
              start_step: int = 0) -> list[tuple[int, bool]]:
    """For each step: the running-statistics row it reads or updates, and whether it normalises
    with batch statistics (training with at least 2 running sequences; one sample has no batch
    variance, so such a step uses its running row and leaves it unchanged). The call's step t is
    step start_step + t of the sequence: a call that continues one reads the rows its steps would
    have read in one long call."""
    last = max_length - 1
    return [(min(start_step + t, last), training and n >= 2) for t, n in enumerate(batch_sizes)]


def update_counts(stats: RunningStats, plan: list[tuple[int, bool]], momentum: Optional[float]):
    """Count every update the plan makes and return each step's weight for its new statistic
    (None where it reads its running row): momentum, or for a cumulative average (momentum
    None, as nn.BatchNorm) 1/count as a 0-dim tensor. Nothing here waits on the device or copies
    from the host (the updated rows are a few runs of slices), and torch.compile can trace it."""
    counts = stats.num_batches_tracked
    factors, seen = [], {}
    for row, use_batch in plan:
        if not use_batch:
            factors.append(None)
            continue
        seen[row] = seen.get(row, 0) + 1
        if momentum is None:
            factors.append(1.0 / (counts[row] + seen[row]).double())
        else:
            factors.append(momentum)
    rows = sorted(seen)
    start = 0
    for i, row in enumerate(rows):  # add each run of consecutive rows with equal counts at once
        last = i + 1 == len(rows)
        if last or rows[i + 1] != row + 1 or seen[rows[i + 1]] != seen[row]:
            counts[rows[start]: row + 1] += seen[row]
            start = i + 1
    return factors
