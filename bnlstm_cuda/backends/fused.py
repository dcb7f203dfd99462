"""What the two fused backends (Triton, CUDA C++) share: the buffers their backward reads, the
accumulator dtype, and the per-step update weights as plain numbers for the launches."""

from __future__ import annotations

from typing import NamedTuple, Optional

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


def launch_factors(factors, dtype: torch.dtype) -> tuple[list[float], Optional[Tensor]]:
    """Per-step update weights for the launches: numbers (-1: the step normalises with its
    running row), and where the weights are 0-dim device tensors (a cumulative average) those
    values as one (T,) tensor of `dtype` the kernels read, with 1 as the number of such a step.
    Nothing waits on the device, and torch.compile traces it whole."""
    lazy = [f for f in factors if isinstance(f, Tensor)]
    numbers = [-1.0 if f is None else 1.0 if isinstance(f, Tensor) else float(f)
               for f in factors]
    if not lazy:
        return numbers, None
    unused = torch.zeros_like(lazy[0])  # steps that read their running row ignore the value
    return numbers, torch.stack([f if isinstance(f, Tensor) else unused for f in factors]).to(dtype)


# The ops both fused backends register (bnlstm::* in C++, bnlstm_triton::* in Python), with one
# schema: per-step host data as lists (factor_values: the weights of a cumulative average, on
# the device), the running statistics mutated in place.
MUTATED = ("mean_ih", "var_ih", "mean_hh", "var_hh", "mean_c", "var_c")
FORWARD_SCHEMA = (
    "(Tensor xw, Tensor weight_hh, Tensor? bias, Tensor gamma_ih, Tensor gamma_hh, "
    "Tensor gamma_c, Tensor beta_c, Tensor h0, Tensor c0, Tensor(a!) mean_ih, Tensor(b!) var_ih, "
    "Tensor(c!) mean_hh, Tensor(d!) var_hh, Tensor(e!) mean_c, Tensor(f!) var_c, "
    "int[] batch_sizes, int[] rows, float[] factors, Tensor? factor_values, float eps) -> "
    "(Tensor y, Tensor h_n, Tensor c_n, Tensor cell, Tensor hw, Tensor stat_ih, Tensor stat_hh, "
    "Tensor stat_c)")
BACKWARD_SCHEMA = (
    "(Tensor xw, Tensor hw, Tensor cell, Tensor weight_hh, Tensor? bias, Tensor gamma_ih, "
    "Tensor gamma_hh, Tensor gamma_c, Tensor beta_c, Tensor stat_ih, Tensor stat_hh, "
    "Tensor stat_c, Tensor dy, Tensor dh_n, Tensor dc_n, int[] batch_sizes, bool[] use_batch) "
    "-> (Tensor dpre_ih, Tensor dpre_hh, Tensor dh0, Tensor dc0, Tensor dgamma_ih, "
    "Tensor dgamma_hh, Tensor dgamma_c, Tensor dbeta_c, Tensor dbias)")
# Triton's variant that computes x_t W_ih^T in each step's launch and returns it last
FUSED_INPUT_SCHEMA = FORWARD_SCHEMA.replace("(Tensor xw,", "(Tensor x, Tensor weight_ih,").replace(
    "Tensor stat_c)", "Tensor stat_c, Tensor xw)")


def forward_loop_fake(xw, weight_hh, bias, gamma_ih, gamma_hh, gamma_c, beta_c, h0, c0, mean_ih,
                      var_ih, mean_hh, var_hh, mean_c, var_c, batch_sizes, rows, factors,
                      factor_values, eps):
    """Shapes and dtypes of the forward op's results, for FakeTensor and torch.compile: y (with
    h0 as row 0), h_n, c_n in the layer's dtype; cell, hw and statistics accumulate."""
    T, B, G = xw.shape
    H = G // 4
    acc = accumulator(xw.dtype)
    return (xw.new_empty(T + 1, B, H), xw.new_empty(B, H), xw.new_empty(B, H),
            xw.new_empty(T + 1, B, H, dtype=acc), xw.new_empty(T, B, G, dtype=acc),
            xw.new_empty(T, 2, G, dtype=acc), xw.new_empty(T, 2, G, dtype=acc),
            xw.new_empty(T, 2, H, dtype=acc))


def forward_loop_fused_input_fake(x, weight_ih, *args):
    """forward_loop_fake's results and xw (T, B, 4H) in the layer's dtype."""
    xw = x.new_empty(*x.shape[:2], weight_ih.shape[0])
    return (*forward_loop_fake(xw, *args), xw.new_empty(xw.shape))


def backward_loop_fake(xw, hw, cell, weight_hh, bias, gamma_ih, gamma_hh, gamma_c, beta_c,
                       stat_ih, stat_hh, stat_c, dy, dh_n, dc_n, batch_sizes, use_batch):
    """Shapes and dtypes of the backward op's results (all in the accumulator dtype)."""
    T, B, G = xw.shape
    H = G // 4
    acc = accumulator(xw.dtype)
    return (xw.new_empty(T, B, G, dtype=acc), xw.new_empty(T, B, G, dtype=acc),
            xw.new_empty(B, H, dtype=acc), xw.new_empty(B, H, dtype=acc),
            xw.new_empty(G, dtype=acc), xw.new_empty(G, dtype=acc), xw.new_empty(H, dtype=acc),
            xw.new_empty(H, dtype=acc), xw.new_empty(G, dtype=acc))
