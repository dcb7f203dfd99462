"""The functional op for one layer and direction, and the direction runner the module shares."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
from torch import Tensor

from . import backends
from .autocast import autocast_dtype, cast
from .function import run_layer
from .layer_state import LayerWeights, RunningStats
from .layout import batch_sizes_of, reverse_padded
from .validation import (
    check_backend_name,
    check_bool,
    check_dtype_device,
    check_input,
    check_int,
    check_lengths,
    check_momentum,
    check_real,
    check_start_step,
    check_stats_shapes,
    check_tensor,
)


def run_direction(x, lengths, h0, c0, weights, stats, *, reverse, training, momentum, eps,
                  backend, start_step=0):
    """One direction over x (T, B, F), time-major, batch sorted by decreasing `lengths` (None:
    every sequence runs all T steps), its first step being step start_step of the sequence.
    Returns y (T, B, H) with zeros past each length, h_n, c_n."""
    T, B = x.shape[:2]
    if reverse:
        x = reverse_padded(x, lengths)
    amp = autocast_dtype(x.device)
    if amp is not None:  # the cast autocast would do, then no autocast inside (see autocast.py)
        x, h0, c0 = cast(x, amp), cast(h0, amp), cast(c0, amp)
        weights = LayerWeights(*(cast(w, amp) for w in weights))
    with torch.autocast(x.device.type, enabled=False) if amp is not None else nullcontext():
        y, h_n, c_n = run_layer(x, h0, c0, weights, stats, batch_sizes_of(lengths, T, B),
                                training, momentum, eps, backend, start_step)
    if reverse:
        y = reverse_padded(y, lengths)
    return y, h_n, c_n


def _check_weight(name: str, w, rows: Optional[int]) -> None:
    """A 2-D, non-empty weight; weight_hh is (4H, H), weight_ih (rows, input_size)."""
    shape = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
    ok = isinstance(w, Tensor) and w.dim() == 2 and w.numel() > 0 and w.is_floating_point()
    if ok and rows is None:
        ok = w.shape[0] == 4 * w.shape[1]
    elif ok:
        ok = w.shape[0] == rows
    if not ok:
        want = "(4*hidden_size, hidden_size)" if rows is None else f"({rows}, input_size)"
        raise ValueError(f"{name}: expected a floating {want} tensor, got {shape}")


def bnlstm(
    input: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Optional[Tensor],
    gamma_ih: Tensor,
    gamma_hh: Tensor,
    gamma_c: Tensor,
    beta_c: Tensor,
    running_stats: RunningStats,
    hx: Optional[tuple[Tensor, Tensor]] = None,
    *,
    lengths=None,
    reverse: bool = False,
    training: bool = True,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    backend: str = "auto",
    start_step: int = 0,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One batch-normalised LSTM layer in one direction (Cooijmans et al., 2016).

    Shapes (T steps, B sequences, I input features, H hidden units, L = running_stats rows):
        input (T, B, I) time-major; weight_ih (4H, I); weight_hh (4H, H); bias (4H,) or None;
        gamma_ih, gamma_hh (4H,); gamma_c, beta_c (H,); running_stats: RunningStats of
        (L, 4H) / (L, H) rows and num_batches_tracked (L,); hx: (h0, c0), each (B, H), or None
        for zeros; lengths: B ints in [1, T] in any order (list or CPU tensor), or None.
    Returns output (T, B, H) (zeros past each length) and (h_n, c_n), each sequence's last step.

    Step t normalises with the batch statistics of the sequences still running at t when
    training (updating row min(t, L-1) of running_stats in place), else with that row. A
    training step with fewer than 2 running sequences uses its row and leaves it unchanged.
    reverse=True reads each sequence backwards from its own last element, like nn.LSTM.
    start_step: the call's step t is step start_step + t of the sequence (row
    min(start_step + t, L-1)), for a call that continues a sequence with hx carried over from
    the previous call; reverse=True takes only 0 (see check_start_step).

    Example:
        >>> import torch, bnlstm_cuda
        >>> m = bnlstm_cuda.BNLSTM(3, 8, max_length=5)
        >>> w, s = m.layer_weights(0), m.running_stats(0)
        >>> out, (h, c) = bnlstm_cuda.bnlstm(torch.randn(5, 4, 3), *w, s, lengths=[5, 2, 3, 1])
        >>> out.shape, h.shape
        (torch.Size([5, 4, 8]), torch.Size([4, 8]))
    """
    _check_weight("weight_hh", weight_hh, None)
    H = weight_hh.shape[1]
    _check_weight("weight_ih", weight_ih, 4 * H)
    check_dtype_device("weight_hh", weight_hh, weight_ih)
    if bias is not None:
        check_tensor("bias", bias, weight_ih, (4 * H,))
    for name, t, width in (("gamma_ih", gamma_ih, 4 * H), ("gamma_hh", gamma_hh, 4 * H),
                           ("gamma_c", gamma_c, H), ("beta_c", beta_c, H)):
        check_tensor(name, t, weight_ih, (width,))
    if not isinstance(running_stats, RunningStats):
        raise TypeError(f"running_stats: expected a bnlstm_cuda.RunningStats, "
                        f"got {type(running_stats).__name__}")
    check_stats_shapes(running_stats, H, weight_ih)
    check_input(input, weight_ih.shape[1], weight_ih, ranks=(3,))
    T, B = input.shape[:2]
    check_int("input.shape[0] (T)", T, 1)
    momentum = check_momentum(momentum)
    eps = check_real("eps", eps, 0.0)
    reverse, training = check_bool("reverse", reverse), check_bool("training", training)
    start_step = check_start_step(start_step, reverse)
    impl = backends.resolve(check_backend_name(backend, backends.NAMES), input.device,
                            autocast_dtype(input.device) or input.dtype)
    if hx is None:
        h0 = c0 = input.new_zeros(B, H)
    else:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx: expected a tuple (h0, c0)")
        h0, c0 = hx
        check_tensor("hx[0] (h0)", h0, input, (B, H))
        check_tensor("hx[1] (c0)", c0, input, (B, H))
    weights = LayerWeights(weight_ih, weight_hh, bias, gamma_ih, gamma_hh, gamma_c, beta_c)
    kwargs = dict(reverse=reverse, training=training, momentum=momentum, eps=eps, backend=impl,
                  start_step=start_step)
    if lengths is None:
        y, h_n, c_n = run_direction(input, None, h0, c0, weights, running_stats, **kwargs)
        return y, (h_n, c_n)
    lengths = check_lengths(lengths, T, B)
    order = sorted(range(B), key=lambda b: -lengths[b])
    inverse = sorted(range(B), key=lambda b: order[b])
    y, h_n, c_n = run_direction(input[:, order], [lengths[b] for b in order], h0[order],
                                c0[order], weights, running_stats, **kwargs)
    return y[:, inverse], (h_n[inverse], c_n[inverse])
