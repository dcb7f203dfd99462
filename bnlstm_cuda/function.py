"""The autograd Function for one layer and direction, with a handwritten backward.

The work every backend shares lives here: before the loop the input product of all steps as one
GEMM and its batch statistics for all steps at once (input_norm.py); after the reverse loop
the input and weight gradients as single GEMMs over all steps. A backend supplies the per-step
loops (`forward_loop`, `backward_loop`, contract in backends/torch_ops.py), which take the input
product with those statistics and return its gradient: through input_norm.py's passes over all
steps, or folded into their own steps. A backend that computes the input product inside its
steps (Triton's "fused" input-product mode) says so through `in_step_input()`, and then gets x
instead of the product.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import input_norm
from .input_norm import InputSaved
from .layer_state import LayerWeights, RunningStats, Steps, input_product, plan_steps


def _forward(backend, x, weights: LayerWeights, h0, c0, stats: RunningStats, steps: Steps,
             eps: float, save: bool):
    """y, h_n, c_n, the backend's saved tensors and the input norm's, of one layer and
    direction."""
    in_step = getattr(backend, "in_step_input", lambda: None)()
    if in_step is not None:
        return in_step(x, weights, h0, c0, stats, steps, eps, save)
    kernels = input_norm.kernels_of(backend, x.device)
    xw = input_product(x, weights, out=None if kernels is None else input_norm.buffer(
        x, (*x.shape[:2], weights.weight_ih.shape[0]), kernels))
    inp = input_norm.forward(xw, stats, steps, eps, kernels)
    y, h_n, c_n, saved = backend.forward_loop(inp, weights, h0, c0, stats, steps, eps, save)
    return y, h_n, c_n, saved, inp


class BNLSTMFunction(torch.autograd.Function):
    """One layer and direction over a time-major, length-sorted, padded batch (see layout.py)."""

    @staticmethod
    def forward(ctx, x, h0, c0, weight_ih, weight_hh, bias, gamma_ih, gamma_hh, gamma_c, beta_c,
                stats, steps, eps, backend):
        weights = LayerWeights(weight_ih, weight_hh, bias, gamma_ih, gamma_hh, gamma_c, beta_c)
        y, h_n, c_n, saved, inp = _forward(backend, x, weights, h0, c0, stats, steps, eps,
                                           save=True)
        ctx.save_for_backward(x, h0, c0, *weights, y, *inp, *saved)
        ctx.saved_type = type(saved)
        ctx.steps = steps._replace(factors=None)
        ctx.backend = backend
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        x, h0, c0, *rest = ctx.saved_tensors
        weights = LayerWeights(*rest[:7])
        y, inp, saved = rest[7], InputSaved(*rest[8:10]), ctx.saved_type(*rest[10:])
        dpre_ih, dpre_hh, dh0, dc0, dgamma_hh, dgamma_c, dbeta_c, dgamma_ih, dbias = (
            ctx.backend.backward_loop(saved, inp, weights, c0, ctx.steps, dy.contiguous(),
                                      dh_n.contiguous(), dc_n.contiguous()))
        kernels = input_norm.kernels_of(ctx.backend, dpre_ih.device)
        dgamma_ih, dgamma_hh, dgamma_c, dbeta_c, dbias = (
            g.to(x.dtype) for g in (dgamma_ih, dgamma_hh, dgamma_c, dbeta_c, dbias))
        dpre_ih, dpre_hh = dpre_ih.to(x.dtype), dpre_hh.to(x.dtype)
        need = ctx.needs_input_grad
        dx = dpre_ih @ weights.weight_ih if need[0] else None
        dweight_ih = dpre_ih.flatten(0, 1).t() @ x.flatten(0, 1) if need[3] else None
        dweight_hh = None
        if need[4]:
            h_prev = torch.cat([h0.unsqueeze(0), y[:-1]],  # rows not running have dpre_hh = 0
                               out=input_norm.buffer(y, y.shape, kernels))
            dweight_hh = dpre_hh.flatten(0, 1).t() @ h_prev.flatten(0, 1)
        dbias = dbias if weights.bias is not None else None
        return (dx, dh0.to(x.dtype), dc0.to(x.dtype), dweight_ih, dweight_hh, dbias, dgamma_ih,
                dgamma_hh, dgamma_c, dbeta_c, None, None, None, None)


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
    start_step: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """y (T, B, H), h_n, c_n of one layer and direction, in the dtype of x; its first step is
    step start_step of the sequence (which running-statistics row each step uses).

    Takes the autograd Function only when a gradient is wanted; otherwise nothing is saved.
    """
    dtype = x.dtype
    acc = dtype if dtype in backend.dtypes(x.device) else torch.float32
    if acc != dtype:
        x, h0, c0 = x.to(acc), h0.to(acc), c0.to(acc)
        weights = LayerWeights(*(None if w is None else w.to(acc) for w in weights))
    steps = plan_steps(batch_sizes, stats, training, momentum, start_step)
    tensors = (x, h0, c0, *weights)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        y, h_n, c_n = BNLSTMFunction.apply(x, h0, c0, *weights, stats, steps, eps, backend)
    else:
        y, h_n, c_n, _, _ = _forward(backend, x, weights, h0, c0, stats, steps, eps, save=False)
    return y.to(dtype), h_n.to(dtype), c_n.to(dtype)
