"""BN_t(x_t W_ih^T) of every step at once, outside the time loop.

The input's batch norm does not depend on the recurrence, so its statistics and its
running-row updates run as a few vectorised ops over the whole (T, B, 4H) input product before
the loop. Its normalisation (the input contribution u_t = gamma_ih BN_t(x_t W_ih^T) + bias) and
its backward run here too, over all steps, for the loops that take u and return the
pre-activation's gradient; the C++ CPU loops do both as they read each step. Either way the
loops keep only the two norms that sit on the recurrence, BN(h W_hh^T) and BN(c).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .device_numbers import device_numbers
from .layer_state import LayerWeights, RunningStats, Steps, accumulator


class InputSaved(NamedTuple):
    """What the input norm's backward (and the fused backends' recomputed u) needs."""

    xw: Tensor  # (T, B, 4H) x W_ih^T, the layer's dtype
    stat: Tensor  # (T, 2, 4H) accumulator dtype: the mean and 1/std step t used


def _running_mask(batch_sizes: list[int], B: int, like: Tensor) -> Tensor:
    """(T, B, 1) 1 for the rows running at each step, else 0."""
    n = device_numbers(batch_sizes, torch.int64, like.device)
    return (torch.arange(B, device=like.device)[None, :] < n[:, None]).to(like.dtype)[..., None]


def _batch_statistics(z: Tensor, batch_sizes: list[int]) -> tuple[Tensor, Tensor]:
    """Per step, mean and biased variance (T, 4H) over its running rows, two-pass."""
    T, B, _ = z.shape
    if min(batch_sizes, default=B) == B:  # every row runs every step: no mask to apply
        mean = z.mean(1)
        return mean, (z - mean[:, None]).square_().mean(1)  # one (T, B, 4H) temporary
    running = _running_mask(batch_sizes, B, z)
    n = device_numbers(batch_sizes, z.dtype, z.device).clamp_min(1)[:, None]
    mean = (z * running).sum(1) / n
    return mean, ((z - mean[:, None]).mul_(running)).square_().sum(1) / n


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """Split steps 0 .. len(rows)-1 into runs [i, j) whose rows rise by one (rows[i] ..
    rows[j-1]) or stay the same: the rows are min(start_step + t, max_length - 1), so a call has
    at most two runs, and slices of them need no index tensor (torch.compile traces slices)."""
    runs, i = [], 0
    while i < len(rows):
        j = i + 1
        step = rows[j] - rows[i] if j < len(rows) and rows[j] - rows[i] in (0, 1) else 1
        while j < len(rows) and rows[j] == rows[j - 1] + step:
            j += 1
        runs.append((i, j))
        i = j
    return runs


def _rows_of(buf: Tensor, rows: list[int]) -> Tensor:
    """buf[rows] (len(rows), F) from slices."""
    parts = [buf[rows[i]: rows[j - 1] + 1] if rows[j - 1] != rows[i] or j - i == 1
             else buf[rows[i]].expand(j - i, buf.shape[1]) for i, j in _runs(rows)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _update_running(buf: Tensor, target: Tensor, steps: Steps, k: int) -> None:
    """Move the running rows of steps 0 .. k-1 (those with batch statistics) towards their
    statistics `target` (k, F), as each step would in order: a row that one step owns moves
    with the others of its run at once; a row shared by several steps (the last, past
    max_length - 1) moves once per step, in step order."""
    for i, j in _runs(steps.rows[:k]):
        first, last = steps.rows[i], steps.rows[j - 1]
        if first != last or j - i == 1:  # each step its own row
            buf[first: last + 1].lerp_(target[i:j].to(buf.dtype),
                                       _weights(steps.factors[i:j], buf))
            continue
        for t in range(i, j):
            weight = steps.factors[t]
            weight = weight.to(buf.dtype) if isinstance(weight, Tensor) else weight
            buf[first].lerp_(target[t].to(buf.dtype), weight)


def _weights(factors: list, like: Tensor):
    """The update weights of several steps: a number when all are the same momentum, else
    (k, 1) in like's dtype (a cumulative average's weights are 0-dim tensors)."""
    if all(not isinstance(f, Tensor) for f in factors) and len(set(factors)) == 1:
        return factors[0]
    return torch.stack([f.to(like.dtype) if isinstance(f, Tensor)
                        else torch.full((), f, dtype=like.dtype, device=like.device)
                        for f in factors])[:, None]


def statistics(xw: Tensor, stats: RunningStats, steps: Steps, eps: float,
               kernels=None) -> Tensor:
    """(T, 2, 4H) mean and 1/std each step normalises x_t W_ih^T with; training steps with batch
    statistics move their running rows (mean_ih, var_ih, in place; unbiased variance), and the
    others read their row after those moves, as the step loop did."""
    z = xw.to(accumulator(xw.dtype))
    k = _batch_steps(steps)
    mean = var = z.new_empty(0, z.shape[2])
    if k:
        batch = kernels.input_statistics if kernels is not None else _batch_statistics
        mean, var = batch(z[:k], steps.batch_sizes[:k])
        n = device_numbers(steps.batch_sizes[:k], z.dtype, z.device)[:, None]
        with torch.no_grad():
            _update_running(stats.mean_ih, mean, steps, k)
            _update_running(stats.var_ih, var * n / (n - 1), steps, k)
    if k < len(steps.rows):
        mean = torch.cat([mean, _rows_of(stats.mean_ih, steps.rows[k:]).to(z.dtype)])
        var = torch.cat([var, _rows_of(stats.var_ih, steps.rows[k:]).to(z.dtype)])
    return torch.stack([mean, torch.rsqrt(var + eps)], dim=1)


def _batch_steps(steps: Steps) -> int:
    """How many steps normalise with batch statistics: a prefix of the call, as the running
    rows never grow and a training step needs at least 2."""
    k = sum(steps.batch_stats)
    assert all(steps.batch_stats[:k]), "batch-statistics steps are a prefix"
    return k


def buffer(like: Tensor, shape: tuple[int, ...], kernels=None) -> Tensor:
    """An uninitialised tensor of like's dtype and device: from the kernels' reuse cache where
    they offer one (the C++ backend's on CPU tensors: its pages are not faulted in afresh each
    call, csrc/cpu_buffers.h), else new."""
    if kernels is not None:
        return kernels.buffer(like, list(shape))
    return like.new_empty(shape)


def contribution(saved: InputSaved, weights: LayerWeights, out=None) -> Tensor:
    """u_t = gamma_ih BN_t(x_t W_ih^T) + bias for every step (T, B, 4H), accumulator dtype;
    finite but meaningless on rows that are not running. `out` may be saved.xw itself (when
    nothing keeps it): then no buffer of that size is allocated."""
    mean, rstd = saved.stat[:, 0, None], saved.stat[:, 1, None]
    z = saved.xw.to(saved.stat.dtype)
    scale = weights.gamma_ih.to(z.dtype) * rstd
    u = torch.sub(z, mean, out=out)
    if weights.bias is None:
        return u.mul_(scale)
    return torch.addcmul(weights.bias.to(z.dtype), u, scale, out=u)


def forward(xw: Tensor, stats: RunningStats, steps: Steps, eps: float,
            kernels=None) -> InputSaved:
    """What the step loops and the input norm's backward need: x W_ih^T and the statistics
    each step normalises it with (the running rows move here)."""
    return InputSaved(xw, statistics(xw, stats, steps, eps, kernels))


def loop_input(inp: InputSaved, weights: LayerWeights, save: bool) -> Tensor:
    """u for a forward loop that takes it; without `save`, u takes xw's buffer where the dtypes
    allow (nothing reads xw after)."""
    reuse = not save and inp.xw.dtype == inp.stat.dtype and not inp.xw.requires_grad
    return contribution(inp, weights, out=inp.xw if reuse else None)


def kernels_of(backend, device: torch.device):
    """The backend's passes over the input product on `device` (a namespace with
    input_statistics doing what _batch_statistics does, and buffer), or None: these torch ops.
    A backend offers them through `input_kernels(device)`."""
    return getattr(backend, "input_kernels", lambda device: None)(device)


def with_input_grads(loop_grads: tuple, inp: InputSaved, weights: LayerWeights,
                     steps: Steps) -> tuple:
    """A backward loop's results as the contract has them, from those of a loop that stops at
    the pre-activation (dpre first, then dpre_hh, dh0, dc0, dgamma_hh, dgamma_c, dbeta_c): dpre
    becomes the gradient of x W_ih^T, and dgamma_ih, dbias come last."""
    dpre, *rest = loop_grads
    dxw, dgamma_ih, dbias = backward(dpre, inp, weights, steps)
    return (dxw, *rest, dgamma_ih, dbias)


def backward(dpre: Tensor, saved: InputSaved, weights: LayerWeights,
             steps: Steps) -> tuple[Tensor, Tensor, Tensor]:
    """From the gradient of every step's pre-activation (T, B, 4H; zero on rows not running):
    the gradient of x W_ih^T, dgamma_ih and dbias (accumulator dtype). A step with batch
    statistics adds the batch-mean terms of BatchNorm's backward,
    gamma rstd (dpre - mean(dpre) - xhat mean(dpre xhat)) over its running rows, the others
    gamma rstd dpre. Two buffers of (T, B, 4H), the second reused for the result."""
    B = dpre.shape[1]
    mean, rstd = saved.stat[:, 0, None], saved.stat[:, 1, None]
    xhat = torch.sub(saved.xw.to(dpre.dtype), mean).mul_(rstd)
    product = dpre * xhat
    dgamma_ih, dbias = product.sum((0, 1)), dpre.sum((0, 1))
    k = _batch_steps(steps)
    if k:
        n = device_numbers(steps.batch_sizes[:k], dpre.dtype, dpre.device)
        n = n[:, None, None]
        out = xhat[:k].mul_(-product[:k].sum(1, keepdim=True) / n)  # xhat's buffer
        out.add_(dpre[:k]).sub_(dpre[:k].sum(1, keepdim=True) / n)
        if min(steps.batch_sizes[:k]) < B:
            out.mul_(_running_mask(steps.batch_sizes[:k], B, dpre))
        xhat[k:] = dpre[k:]
    else:
        xhat.copy_(dpre)
    return xhat.mul_(weights.gamma_ih.to(dpre.dtype) * rstd), dgamma_ih, dbias
