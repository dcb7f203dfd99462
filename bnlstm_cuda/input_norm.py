"""BN_t(x_t W_ih^T) of every step at once, outside the time loop.

The input's batch norm does not depend on the recurrence, so its statistics, its running-row
updates and its normalisation run as a few vectorised ops over the whole (T, B, 4H) input
product before the loop, and its backward as a few more after the reverse loop. The step
loops (every backend) then take the input contribution u_t = gamma_ih BN_t(x_t W_ih^T) + bias
and keep only the two norms that sit on the recurrence, BN(h W_hh^T) and BN(c).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .layer_state import LayerWeights, RunningStats, Steps, accumulator


class InputSaved(NamedTuple):
    """What the input norm's backward (and the fused backends' recomputed u) needs."""

    xw: Tensor  # (T, B, 4H) x W_ih^T, the layer's dtype
    stat: Tensor  # (T, 2, 4H) accumulator dtype: the mean and 1/std step t used


def _running_mask(batch_sizes: list[int], B: int, like: Tensor) -> Tensor:
    """(T, B, 1) 1 for the rows running at each step, else 0."""
    n = torch.tensor(batch_sizes, device=like.device)
    return (torch.arange(B, device=like.device)[None, :] < n[:, None]).to(like.dtype)[..., None]


def _batch_statistics(z: Tensor, batch_sizes: list[int]) -> tuple[Tensor, Tensor]:
    """Per step, mean and biased variance (T, 4H) over its running rows, two-pass."""
    T, B, _ = z.shape
    if min(batch_sizes, default=B) == B:  # every row runs every step: no mask to apply
        mean = z.mean(1)
        return mean, (z - mean[:, None]).square().mean(1)
    running = _running_mask(batch_sizes, B, z)
    n = torch.tensor(batch_sizes, device=z.device, dtype=z.dtype).clamp_min(1)[:, None]
    mean = (z * running).sum(1) / n
    return mean, ((z - mean[:, None]) * running).square().sum(1) / n


def _update_running(buf: Tensor, target: Tensor, steps: Steps, used: list[int]) -> None:
    """Move the running rows of the steps `used` (those with batch statistics) towards their
    statistics `target` (T, F), as each step would in order: the rows below the last are each a
    single step's, so they move at once; the last row, shared by every step past
    max_length - 1, moves once per step in step order."""
    last = buf.shape[0] - 1
    own = [t for t in used if steps.rows[t] < last]
    if own:
        index = torch.tensor([steps.rows[t] for t in own], device=buf.device)
        weight = _weights([steps.factors[t] for t in own], buf)
        buf.index_copy_(0, index, buf[index].lerp(target[own].to(buf.dtype), weight))
    for t in (t for t in used if steps.rows[t] == last):
        weight = steps.factors[t]
        weight = weight.to(buf.dtype) if isinstance(weight, Tensor) else weight
        buf[last].lerp_(target[t].to(buf.dtype), weight)


def _weights(factors: list, like: Tensor):
    """The update weights of several steps: a number when all are the same momentum, else
    (k, 1) in like's dtype (a cumulative average's weights are 0-dim tensors)."""
    if all(not isinstance(f, Tensor) for f in factors) and len(set(factors)) == 1:
        return factors[0]
    return torch.stack([f.to(like.dtype) if isinstance(f, Tensor)
                        else torch.tensor(f, dtype=like.dtype, device=like.device)
                        for f in factors])[:, None]


def statistics(xw: Tensor, stats: RunningStats, steps: Steps, eps: float) -> Tensor:
    """(T, 2, 4H) mean and 1/std each step normalises x_t W_ih^T with; training steps with batch
    statistics move their running rows (mean_ih, var_ih, in place; unbiased variance), and the
    others read their row after those moves, as the step loop did."""
    z = xw.to(accumulator(xw.dtype))
    used = [t for t, u in enumerate(steps.batch_stats) if u]
    rows = torch.tensor(steps.rows, device=xw.device)
    if used:
        mean, var = _batch_statistics(z, steps.batch_sizes)
        n = torch.tensor(steps.batch_sizes, device=z.device, dtype=z.dtype)[:, None]
        with torch.no_grad():
            _update_running(stats.mean_ih, mean, steps, used)
            _update_running(stats.var_ih, var * n / (n - 1).clamp_min(1), steps, used)
    if len(used) < len(steps.batch_stats):
        run_mean = stats.mean_ih[rows].to(z.dtype)
        run_var = stats.var_ih[rows].to(z.dtype)
        if used:
            use_batch = torch.tensor(steps.batch_stats, device=z.device)[:, None]
            mean = torch.where(use_batch, mean, run_mean)
            var = torch.where(use_batch, var, run_var)
        else:
            mean, var = run_mean, run_var
    return torch.stack([mean, torch.rsqrt(var + eps)], dim=1)


def contribution(saved: InputSaved, weights: LayerWeights) -> Tensor:
    """u_t = gamma_ih BN_t(x_t W_ih^T) + bias for every step (T, B, 4H), accumulator dtype;
    finite but meaningless on rows that are not running."""
    mean, rstd = saved.stat[:, 0, None], saved.stat[:, 1, None]
    z = saved.xw.to(saved.stat.dtype)
    scale = weights.gamma_ih.to(z.dtype) * rstd
    if weights.bias is None:
        return (z - mean) * scale
    return torch.addcmul(weights.bias.to(z.dtype), z - mean, scale)


def forward(xw: Tensor, weights: LayerWeights, stats: RunningStats, steps: Steps,
            eps: float) -> tuple[Tensor, InputSaved]:
    """The input contribution u of every step and what its backward needs."""
    saved = InputSaved(xw, statistics(xw, stats, steps, eps))
    return contribution(saved, weights), saved


def backward(dpre: Tensor, saved: InputSaved, weights: LayerWeights,
             steps: Steps) -> tuple[Tensor, Tensor, Tensor]:
    """From the gradient of every step's pre-activation (T, B, 4H; zero on rows not running):
    the gradient of x W_ih^T, dgamma_ih and dbias (accumulator dtype). A step with batch
    statistics adds the batch-mean terms of BatchNorm's backward:
    scale * (d - mean(d) - xhat * mean(d * xhat)) with d = gamma_ih dpre, over its running rows."""
    T, B, _ = dpre.shape
    mean, rstd = saved.stat[:, 0, None], saved.stat[:, 1, None]
    xhat = (saved.xw.to(dpre.dtype) - mean) * rstd
    dgamma_ih = (dpre * xhat).sum((0, 1))
    dbias = dpre.sum((0, 1))
    d = dpre * weights.gamma_ih.to(dpre.dtype)
    used = torch.tensor(steps.batch_stats, device=dpre.device)[:, None, None]
    if not any(steps.batch_stats):
        return d * rstd, dgamma_ih, dbias
    n = torch.tensor(steps.batch_sizes, dtype=dpre.dtype, device=dpre.device).clamp_min(1)
    n = n[:, None, None]
    centred = d - d.sum(1, keepdim=True) / n - xhat * (d * xhat).sum(1, keepdim=True) / n
    if min(steps.batch_sizes) < B:
        centred = centred * _running_mask(steps.batch_sizes, B, dpre)
    return torch.where(used, centred, d) * rstd, dgamma_ih, dbias
