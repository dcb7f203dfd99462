"""The per-step loops in vectorised torch ops: runs on any device, and is the second oracle that
the fused kernels are checked against.

Rows of a step are the sequences still running (a prefix: sequences are sorted by decreasing
length); the rest of the batch keeps its state untouched. Half-precision layers are computed
in float32 by the caller (function.run_layer), so this file sees one dtype.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..layer_state import LayerWeights, RunningStats, input_product, step_plan, update_counts

name = "torch"
dtypes = (torch.float32, torch.float64)  # others run in float32


def available() -> tuple[bool, str]:
    return True, "vectorised torch ops run on every device"


def supports(device: torch.device) -> Optional[str]:
    return None


class Saved(NamedTuple):
    """What backward needs, per step t (rows past batch_sizes[t] are zero)."""

    xhat_ih: Tensor  # (T, B, 4H) normalised x W_ih^T
    xhat_hh: Tensor  # (T, B, 4H) normalised h W_hh^T
    gates: Tensor  # (T, B, 4H) sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    cell: Tensor  # (T, B, H) c_t
    chat: Tensor  # (T, B, H) normalised c_t
    rstd_ih: Tensor  # (T, 4H) 1/sqrt(var + eps) used at step t
    rstd_hh: Tensor  # (T, 4H)
    rstd_c: Tensor  # (T, H)


def _normalize(z, mean_buf, var_buf, row, factor, eps):
    """Return ((z - mean) * rstd, rstd) with batch statistics when factor is not None (then the
    running row moves by factor towards them), else with the running row."""
    if factor is None:
        mean, var = mean_buf[row].to(z.dtype), var_buf[row].to(z.dtype)
    else:
        n = z.shape[0]
        mean = z.mean(0)
        var = (z - mean).square().mean(0)  # two-pass: no cancellation for large means
        with torch.no_grad():
            weight = factor.to(mean_buf.dtype) if isinstance(factor, Tensor) else factor
            mean_buf[row].lerp_(mean.to(mean_buf.dtype), weight)
            var_buf[row].lerp_((var * (n / (n - 1))).to(var_buf.dtype), weight)
    rstd = torch.rsqrt(var + eps)
    return (z - mean) * rstd, rstd


def forward_loop(
    x: Tensor,
    weights: LayerWeights,
    h0: Tensor,
    c0: Tensor,
    stats: RunningStats,
    batch_sizes: list[int],
    training: bool,
    momentum: Optional[float],
    eps: float,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, Optional[Saved]]:
    """Run the steps over x (T, B, input_size); return y (T, B, H), h_n, c_n, Saved|None."""
    xw = input_product(x, weights)
    T, B, G = xw.shape
    H = G // 4
    y = xw.new_zeros(T, B, H)
    h, c = h0.clone(), c0.clone()
    saved = None
    if save:
        saved = Saved(
            *(xw.new_zeros(T, B, G) for _ in range(3)),
            *(xw.new_zeros(T, B, H) for _ in range(2)),
            xw.new_ones(T, G), xw.new_ones(T, G), xw.new_ones(T, H),
        )
    plan = step_plan(batch_sizes, stats.max_length, training)
    factors = update_counts(stats, plan, momentum)
    for t, ((row, _), factor) in enumerate(zip(plan, factors)):
        n = batch_sizes[t]
        xhat_ih, rstd_ih = _normalize(xw[t, :n], stats.mean_ih, stats.var_ih, row, factor, eps)
        xhat_hh, rstd_hh = _normalize(h[:n] @ weights.weight_hh.t(), stats.mean_hh,
                                      stats.var_hh, row, factor, eps)
        pre = weights.gamma_ih * xhat_ih + weights.gamma_hh * xhat_hh
        if weights.bias is not None:
            pre = pre + weights.bias
        i, f, g, o = pre.chunk(4, dim=1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c_t = f * c[:n] + i * g
        chat, rstd_c = _normalize(c_t, stats.mean_c, stats.var_c, row, factor, eps)
        h_t = o * torch.tanh(weights.gamma_c * chat + weights.beta_c)
        h[:n], c[:n], y[t, :n] = h_t, c_t, h_t
        if saved is not None:
            saved.xhat_ih[t, :n], saved.xhat_hh[t, :n] = xhat_ih, xhat_hh
            saved.gates[t, :n] = torch.cat([i, f, g, o], dim=1)
            saved.cell[t, :n], saved.chat[t, :n] = c_t, chat
            saved.rstd_ih[t], saved.rstd_hh[t], saved.rstd_c[t] = rstd_ih, rstd_hh, rstd_c
    return y, h, c, saved


def _bn_backward(dxhat, xhat, rstd, use_batch):
    """Gradient through (z - mean) * rstd; with batch statistics the mean and variance depend on
    every row, which adds the two batch-mean terms."""
    if not use_batch:
        return dxhat * rstd
    return rstd * (dxhat - dxhat.mean(0) - xhat * (dxhat * xhat).mean(0))


def backward_loop(
    saved: Saved,
    weights: LayerWeights,
    c0: Tensor,
    batch_sizes: list[int],
    batch_stats: list[bool],
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
):
    """Run the steps in reverse. Returns dpre_ih, dpre_hh (T, B, 4H): gradients of x W_ih^T and
    h_{t-1} W_hh^T; dh0, dc0 (B, H); and dgamma_ih, dgamma_hh, dgamma_c, dbeta_c, dbias."""
    T, B, G = saved.gates.shape
    dpre_ih, dpre_hh = dy.new_zeros(T, B, G), dy.new_zeros(T, B, G)
    dh, dc = dh_n.clone(), dc_n.clone()
    dgamma_ih, dgamma_hh, dbias = (dy.new_zeros(G) for _ in range(3))
    dgamma_c, dbeta_c = dy.new_zeros(G // 4), dy.new_zeros(G // 4)
    for t in reversed(range(T)):
        n, use_batch = batch_sizes[t], batch_stats[t]
        i, f, g, o = saved.gates[t, :n].chunk(4, dim=1)
        chat = saved.chat[t, :n]
        c_prev = saved.cell[t - 1, :n] if t > 0 else c0[:n]
        dh_t = dh[:n] + dy[t, :n]
        tanh_cn = torch.tanh(weights.gamma_c * chat + weights.beta_c)
        dcn = dh_t * o * (1 - tanh_cn * tanh_cn)
        dgamma_c += (dcn * chat).sum(0)
        dbeta_c += dcn.sum(0)
        dc_t = dc[:n] + _bn_backward(dcn * weights.gamma_c, chat, saved.rstd_c[t], use_batch)
        dpre = torch.cat([
            dc_t * g * i * (1 - i),
            dc_t * c_prev * f * (1 - f),
            dc_t * i * (1 - g * g),
            dh_t * tanh_cn * o * (1 - o),
        ], dim=1)
        dbias += dpre.sum(0)
        xhat_ih, xhat_hh = saved.xhat_ih[t, :n], saved.xhat_hh[t, :n]
        dgamma_ih += (dpre * xhat_ih).sum(0)
        dgamma_hh += (dpre * xhat_hh).sum(0)
        dpre_ih[t, :n] = _bn_backward(dpre * weights.gamma_ih, xhat_ih, saved.rstd_ih[t], use_batch)
        dpre_hh[t, :n] = _bn_backward(dpre * weights.gamma_hh, xhat_hh, saved.rstd_hh[t], use_batch)
        dh[:n] = dpre_hh[t, :n] @ weights.weight_hh
        dc[:n] = dc_t * f
    return dpre_ih, dpre_hh, dh, dc, dgamma_ih, dgamma_hh, dgamma_c, dbeta_c, dbias
