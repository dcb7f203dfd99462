"""What the two fused backends (Triton, CUDA C++) share: the buffers their backward reads, their
ops' schemas and fake kernels, and the per-step update weights as plain numbers for the
launches."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..layer_state import accumulator


class Saved(NamedTuple):
    """What the backward kernels read besides the input norm's InputSaved (from which u is
    recomputed): 5H values per step and row in the accumulator dtype, beside the output the
    Function keeps and x W_ih^T in the layer's dtype."""

    hw: Tensor  # (T, B, 4H) raw h_{t-1} W_hh^T
    cell: Tensor  # (T+1, B, H) c0 then c_t
    stat_hh: Tensor  # (T, 2, 4H) mean and rstd used at step t
    stat_c: Tensor  # (T, 2, H)


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


def with_running_rows(stats, names, acc: torch.dtype, loop):
    """loop(stats) with the running rows `names` contiguous and in the accumulator dtype, as the
    kernels update them in place there: others are worked on as copies, written back after."""
    unfit = [k for k in names
             if not (getattr(stats, k).is_contiguous() and getattr(stats, k).dtype == acc)]
    if not unfit:
        return loop(stats)
    work = stats._replace(**{k: getattr(stats, k).to(acc).contiguous() for k in unfit})
    out = loop(work)
    for k in unfit:
        getattr(stats, k).copy_(getattr(work, k))
    return out


def launch_steps(steps, acc: torch.dtype, eps) -> tuple:
    """The ops' trailing arguments: batch_sizes, rows, factors, factor_values, eps."""
    return (steps.batch_sizes, steps.rows, *launch_factors(steps.factors, acc), float(eps))


# The ops both fused backends register (bnlstm::* in C++, bnlstm_triton::* in Python), with one
# schema: per-step host data as lists (factor_values: the weights of a cumulative average, on
# the device), the running statistics mutated in place. u is the input's contribution to every
# step's pre-activation (accumulator dtype); weight_hh's dtype is the layer's. The C++ ops also
# take x W_ih^T in u's place with its statistics (input_stat, gamma_ih, bias: the CPU loops
# normalise it in their steps), and their backward returns dgamma_ih and dbias after these.
MUTATED = ("mean_hh", "var_hh", "mean_c", "var_c")
FORWARD_SCHEMA = (
    "(Tensor u, Tensor weight_hh, Tensor gamma_hh, Tensor gamma_c, Tensor beta_c, Tensor h0, "
    "Tensor c0, Tensor(a!) mean_hh, Tensor(b!) var_hh, Tensor(c!) mean_c, Tensor(d!) var_c, "
    "int[] batch_sizes, int[] rows, float[] factors, Tensor? factor_values, float eps) -> "
    "(Tensor y, Tensor h_n, Tensor c_n, Tensor cell, Tensor hw, Tensor stat_hh, Tensor stat_c)")
BACKWARD_SCHEMA = (
    "(Tensor u, Tensor hw, Tensor cell, Tensor weight_hh, Tensor gamma_hh, Tensor gamma_c, "
    "Tensor beta_c, Tensor stat_hh, Tensor stat_c, Tensor dy, Tensor dh_n, Tensor dc_n, "
    "int[] batch_sizes, bool[] use_batch) -> (Tensor dpre, Tensor dpre_hh, Tensor dh0, "
    "Tensor dc0, Tensor dgamma_hh, Tensor dgamma_c, Tensor dbeta_c)")
# Triton's variant that computes x_t W_ih^T and its batch norm in each step's launch: it takes
# x and the input norm's weights and running rows instead of u, and returns xw and the input
# norm's statistics last
FUSED_INPUT_MUTATED = ("mean_ih", "var_ih", *MUTATED)
FUSED_INPUT_SCHEMA = FORWARD_SCHEMA.replace(
    "(Tensor u,", "(Tensor x, Tensor weight_ih, Tensor? bias, Tensor gamma_ih, "
    "Tensor(e!) mean_ih, Tensor(f!) var_ih,").replace(
    "Tensor stat_c)", "Tensor stat_c, Tensor xw, Tensor stat_ih)")


def forward_loop_fake(u, weight_hh, gamma_hh, gamma_c, beta_c, h0, c0, mean_hh, var_hh, mean_c,
                      var_c, batch_sizes, rows, factors, factor_values, eps, save=True,
                      input_stat=None, gamma_ih=None, bias=None):
    """Shapes and dtypes of the forward op's results, for FakeTensor and torch.compile: y (with
    h0 as row 0), h_n, c_n in the layer's dtype; cell, hw and statistics in u's (the
    accumulator). `save` and the input norm's arguments: the C++ op's (hw is written only where
    save is true; with input_stat, u holds x W_ih^T)."""
    T, B, G = u.shape
    H = G // 4
    return (h0.new_empty(T + 1, B, H), h0.new_empty(B, H), h0.new_empty(B, H),
            u.new_empty(T + 1, B, H), u.new_empty(T, B, G), u.new_empty(T, 2, G),
            u.new_empty(T, 2, H))


def forward_loop_fused_input_fake(x, weight_ih, bias, gamma_ih, mean_ih, var_ih, weight_hh,
                                  *args):
    """forward_loop_fake's results, xw (T, B, 4H) in the layer's dtype and the input norm's
    statistics (T, 2, 4H) in the accumulator dtype."""
    T, B, _ = x.shape
    G = weight_ih.shape[0]
    u = x.new_empty(T, B, G, dtype=accumulator(x.dtype))
    return (*forward_loop_fake(u, weight_hh, *args), x.new_empty(T, B, G), u.new_empty(T, 2, G))


def backward_loop_fake(u, hw, cell, weight_hh, gamma_hh, gamma_c, beta_c, stat_hh, stat_c, dy,
                       dh_n, dc_n, batch_sizes, use_batch):
    """Shapes and dtypes of the backward op's results (all in the accumulator dtype, u's)."""
    T, B, G = u.shape
    H = G // 4
    return (u.new_empty(T, B, G), u.new_empty(T, B, G), u.new_empty(B, H), u.new_empty(B, H),
            u.new_empty(G), u.new_empty(H), u.new_empty(H))
