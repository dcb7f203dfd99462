"""The per-step loops in vectorised torch ops: runs on any device, and is the second oracle that
the fused kernels are checked against.

The contract every backend keeps (per layer and direction; function.py calls it):
- `forward_loop(inp, weights, h0, c0, stats, steps, eps, save) -> y, h_n, c_n, saved`: inp
  (input_norm.InputSaved) holds x W_ih^T (T, B, 4H) and the mean and 1/std each step normalises
  it with, computed for all steps before the loop (input_norm.py; the input norm's running rows
  are already updated). The input's contribution to each step's pre-activation is u =
  gamma_ih BN_t(x_t W_ih^T) + bias: `input_norm.loop_input` computes it for all steps at once,
  or a loop computes it as it reads each step (the C++ CPU loops). The loop adds
  gamma_hh BN_t(h_{t-1} W_hh^T), runs the gates and BN_t(c_t), and updates the running rows of
  those two norms. steps (Steps) says each step's running rows, statistics row, and update
  weight. saved: what its backward needs (None unless save).
- `backward_loop(saved, inp, weights, c0, steps, dy, dh_n, dc_n) -> dxw, dpre_hh, dh0, dc0,
  dgamma_hh, dgamma_c, dbeta_c, dgamma_ih, dbias`: dxw (T, B, 4H) is the gradient of x W_ih^T,
  dpre_hh that of h_{t-1} W_hh^T; both zero on rows not running. A loop that stops at the
  pre-activation's gradient hands it to `input_norm.with_input_grads` (the input norm's
  backward for all steps after the loop); the C++ CPU loops do that backward in their steps.
  inp lets a backend recompute u rather than keep it.
- optionally `input_kernels(device)`: a faster statistics pass over the (T, B, 4H) input
  product on that device (input_norm.kernels_of; the C++ backend's on CPU tensors), or None
  for the torch ops. It also gives the Function its (T, B, 4H) buffers (`buffer(like, size)`:
  the C++ backend's are reused between calls, csrc/cpu_buffers.h).

Rows of a step are the sequences still running (a prefix: sequences are sorted by decreasing
length); the rest of the batch keeps its state untouched. Half-precision layers are computed
in float32 by the caller (function.run_layer), so this file sees one dtype.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import input_norm
from ..input_norm import InputSaved
from ..layer_state import LayerWeights, RunningStats, Steps

name = "torch"


def dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """Computed natively (others run in float32)."""
    return (torch.float32, torch.float64)


def available() -> tuple[bool, str]:
    return True, "vectorised torch ops run on every device"


def supports(device: torch.device) -> Optional[str]:
    return None


class Saved(NamedTuple):
    """What backward needs, per step t (rows past batch_sizes[t] are zero)."""

    xhat_hh: Tensor  # (T, B, 4H) normalised h W_hh^T
    gates: Tensor  # (T, B, 4H) sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    cell: Tensor  # (T, B, H) c_t
    chat: Tensor  # (T, B, H) normalised c_t
    rstd_hh: Tensor  # (T, 4H) 1/sqrt(var + eps) used at step t
    rstd_c: Tensor  # (T, H)


def _normalize(z, mean_buf, var_buf, row, factor, eps, save=True):
    """Return ((z - mean) * rstd, rstd) with batch statistics when factor is not None (then the
    running row moves by factor towards them), else with the running row. A numeric factor and
    buffers of z's dtype take torch.native_batch_norm: the same arithmetic in one fused op (its
    rstd is None in evaluation when nothing is saved)."""
    fused = (not isinstance(factor, Tensor) and mean_buf.dtype == z.dtype
             and var_buf.dtype == z.dtype and mean_buf.is_contiguous() and var_buf.is_contiguous())
    if fused and factor is None:  # 1/std only where the backward will want it
        xhat = torch.native_batch_norm(z, None, None, mean_buf[row], var_buf[row], False, 0.0,
                                       eps)[0]
        return xhat, torch.rsqrt(var_buf[row] + eps) if save else None
    if fused:  # updates the running rows in place (unbiased variance) and returns 1/std
        xhat, _, rstd = torch.native_batch_norm(z, None, None, mean_buf[row], var_buf[row], True,
                                                factor, eps)
        return xhat, rstd
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
    inp: InputSaved,
    weights: LayerWeights,
    h0: Tensor,
    c0: Tensor,
    stats: RunningStats,
    steps: Steps,
    eps: float,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, Optional[Saved]]:
    """Run the steps given x W_ih^T and its statistics; return y (T, B, H), h_n, c_n,
    Saved|None."""
    # in the layer's dtype: a half-precision layer's recurrence stays in it (the tests' low
    # precision baseline; run_layer gives this backend float32 and float64 layers only)
    u = input_norm.loop_input(inp, weights, save).to(weights.weight_hh.dtype)
    T, B, G = u.shape
    H = G // 4
    y = u.new_zeros(T, B, H)
    h, c = h0.clone(), c0.clone()
    saved = None
    if save:
        saved = Saved(*(u.new_zeros(T, B, G) for _ in range(2)),
                      *(u.new_zeros(T, B, H) for _ in range(2)), u.new_ones(T, G),
                      u.new_ones(T, H))
    for t, (n, row, use_batch, factor) in enumerate(zip(*steps)):
        factor = factor if use_batch else None
        xhat_hh, rstd_hh = _normalize(h[:n] @ weights.weight_hh.t(), stats.mean_hh,
                                      stats.var_hh, row, factor, eps, save)
        pre = u[t, :n] + weights.gamma_hh * xhat_hh
        i, f, g, o = pre.chunk(4, dim=1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c_t = f * c[:n] + i * g
        chat, rstd_c = _normalize(c_t, stats.mean_c, stats.var_c, row, factor, eps, save)
        h_t = o * torch.tanh(weights.gamma_c * chat + weights.beta_c)
        h[:n], c[:n], y[t, :n] = h_t, c_t, h_t
        if saved is not None:
            saved.xhat_hh[t, :n] = xhat_hh
            saved.gates[t, :n] = torch.cat([i, f, g, o], dim=1)
            saved.cell[t, :n], saved.chat[t, :n] = c_t, chat
            saved.rstd_hh[t], saved.rstd_c[t] = rstd_hh, rstd_c
    return y, h, c, saved


def _bn_backward(dout, xhat, scale, use_batch, unit):
    """Gradient through gamma * (z - mean) * rstd to z, given dout and scale = gamma * rstd;
    with batch statistics the mean and variance depend on every row, which adds the two
    batch-mean terms: scale * (dout - mean(dout) - xhat * mean(dout * xhat)). That is
    native_batch_norm_backward's training formula for input xhat, mean 0, 1/std 1 and weight
    `scale`, in one op (unit: that mean and 1/std, zeros and ones of the feature size)."""
    if not use_batch:
        return dout * scale
    return torch.ops.aten.native_batch_norm_backward(
        dout, xhat, scale, None, None, *unit, True, 0.0, [True, False, False])[0]


def backward_loop(
    saved: Saved,
    inp: InputSaved,
    weights: LayerWeights,
    c0: Tensor,
    steps: Steps,
    dy: Tensor,
    dh_n: Tensor,
    dc_n: Tensor,
):
    """Run the steps in reverse. Returns dxw, dpre_hh (T, B, 4H): gradients of x W_ih^T and of
    h_{t-1} W_hh^T; dh0, dc0 (B, H); and dgamma_hh, dgamma_c, dbeta_c, dgamma_ih, dbias.

    Only what the recurrence needs runs per step (BN(c) and BN(h W_hh^T) backwards, dh, dc); the
    per-feature sums and the input norm's backward run once over all steps after the loop."""
    T, B, G = saved.gates.shape
    H = G // 4
    w = weights
    # what every step multiplies by, for all steps at once: the gates' derivatives (with c_{t-1}
    # and tanh(BN(c)) folded in) and the norms' gamma * rstd
    i, f, g, o = saved.gates.chunk(4, dim=2)
    c_prev = torch.cat([c0[None], saved.cell[:-1]])
    tanh_cn = torch.tanh(w.gamma_c * saved.chat + w.beta_c)
    through_c = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], dim=2)
    through_h = tanh_cn * o * (1 - o)
    to_cn = o * (1 - tanh_cn * tanh_cn)
    scale_c, scale_hh = w.gamma_c * saved.rstd_c, w.gamma_hh * saved.rstd_hh
    unit_c, unit_hh = ((dy.new_zeros(F), dy.new_ones(F)) for F in (H, G))
    dpre_hh = dy.new_zeros(T, B, G)
    dpre = dy.new_zeros(T, B, G)  # gradient of each step's pre-activation (before the norms)
    dcn = dy.new_zeros(T, B, H)  # gradient of each step's normalised cell, BN(c)
    dh, dc = dh_n.clone(), dc_n.clone()
    for t in reversed(range(T)):
        n, use_batch = steps.batch_sizes[t], steps.batch_stats[t]
        dh_t = dh[:n] + dy[t, :n]
        dcn[t, :n] = dcn_t = dh_t * to_cn[t, :n]
        dc_t = dc[:n] + _bn_backward(dcn_t, saved.chat[t, :n], scale_c[t], use_batch, unit_c)
        dpre[t, :n] = dpre_t = torch.cat([dc_t.repeat(1, 3) * through_c[t, :n],
                                          dh_t * through_h[t, :n]], dim=1)
        dpre_hh[t, :n] = dpre_hh_t = _bn_backward(dpre_t, saved.xhat_hh[t, :n], scale_hh[t],
                                                  use_batch, unit_hh)
        dh[:n] = dpre_hh_t @ w.weight_hh
        dc[:n] = dc_t * f[t, :n]
    dgamma_hh = (dpre * saved.xhat_hh).sum((0, 1))
    dgamma_c, dbeta_c = (dcn * saved.chat).sum((0, 1)), dcn.sum((0, 1))
    return input_norm.with_input_grads((dpre, dpre_hh, dh, dc, dgamma_hh, dgamma_c, dbeta_c),
                                       inp, w, steps)
