"""The autograd Function for one layer and direction, with a handwritten backward.

The work every backend shares lives here: after the reverse loop the input and weight gradients
as single GEMMs over all steps. A backend supplies the per-step loops (`forward_loop`,
`backward_loop`); the forward loop gets x and computes the input product of all steps as one
GEMM ahead of its loop (layer_state.input_product), or inside its step kernel.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .layer_state import LayerWeights, RunningStats, step_plan


class BNLSTMFunction(torch.autograd.Function):
    """One layer and direction over a time-major, length-sorted, padded batch (see layout.py)."""

    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias, gamma_ih, gamma_hh, gamma_c, beta_c,
                stats, batch_sizes, training, momentum, eps, backend):
        weights = LayerWeights(weight_ih, weight_hh, bias, gamma_ih, gamma_hh, gamma_c, beta_c)
        y, h_n, c_n, saved = backend.forward_loop(
            x, weights, h0, c0, stats, batch_sizes, training, momentum, eps, save=True
        )
        ctx.save_for_backward(x, h0, c0, *weights, y, *saved)
        ctx.saved_type = type(saved)
        ctx.batch_stats = [u for _, u in step_plan(batch_sizes, stats.max_length, training)]
        ctx.batch_sizes = batch_sizes
        ctx.backend = backend
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        x, h0, c0, *rest = ctx.saved_tensors
        weights = LayerWeights(*rest[:7])
        y, saved = rest[7], ctx.saved_type(*rest[8:])
        dpre_ih, dpre_hh, dh0, dc0, *dfeature = ctx.backend.backward_loop(
            saved, weights, c0, ctx.batch_sizes, ctx.batch_stats,
            dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(),
        )
        dgamma_ih, dgamma_hh, dgamma_c, dbeta_c, dbias = (g.to(x.dtype) for g in dfeature)
        dpre_ih, dpre_hh = dpre_ih.to(x.dtype), dpre_hh.to(x.dtype)
        need = ctx.needs_input_grad
        dx = dpre_ih @ weights.weight_ih if need[0] else None
        dweight_ih = dpre_ih.flatten(0, 1).t() @ x.flatten(0, 1) if need[3] else None
        dweight_hh = None
        if need[4]:
            h_prev = torch.cat([h0.unsqueeze(0), y[:-1]])  # rows not running have dpre_hh = 0
            dweight_hh = dpre_hh.flatten(0, 1).t() @ h_prev.flatten(0, 1)
        dbias = dbias if weights.bias is not None else None
        return (dx, dh0.to(x.dtype), dc0.to(x.dtype), dweight_ih, dweight_hh, dbias, dgamma_ih,
                dgamma_hh, dgamma_c, dbeta_c, None, None, None, None, None, None)


def run_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: LayerWeights,
    stats: RunningStats,
    batch_sizes: list[int],
    training: bool,
    momentum: Optional[float],
    eps: float,
    backend,
) -> tuple[Tensor, Tensor, Tensor]:
    """y (T, B, H), h_n, c_n of one layer and direction, in the dtype of x.

    Takes the autograd Function only when a gradient is wanted; otherwise nothing is saved.
    """
    dtype = x.dtype
    acc = dtype if dtype in backend.dtypes(x.device) else torch.float32
    if acc != dtype:
        x, h0, c0 = x.to(acc), h0.to(acc), c0.to(acc)
        weights = LayerWeights(*(None if w is None else w.to(acc) for w in weights))
    tensors = (x, h0, c0, *weights)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        y, h_n, c_n = BNLSTMFunction.apply(
            x, h0, c0, *weights, stats, batch_sizes, training, momentum, eps, backend
        )
    else:
        y, h_n, c_n, _ = backend.forward_loop(
            x, weights, h0, c0, stats, batch_sizes, training, momentum, eps, save=False
        )
    return y.to(dtype), h_n.to(dtype), c_n.to(dtype)
