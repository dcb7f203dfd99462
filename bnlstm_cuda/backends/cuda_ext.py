"""The CUDA C++ step kernels (csrc/, built by setup.py into bnlstm_cuda._C): the same algorithm
and saved buffers as triton_step.py, with the time loops in C++ (one launch per step).

The extension registers the ops `torch.ops.bnlstm.forward_loop` and
`torch.ops.bnlstm.backward_loop` (schemas in csrc/bnlstm.cpp; the running-statistics buffers are
`Tensor(a!)`, mutated in place). Their fake kernels live here, so shapes propagate under
FakeTensorMode and torch.compile without running a kernel. Autograd is the handwritten
backward of function.BNLSTMFunction, which calls backward_loop.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..layer_state import LayerWeights, RunningStats, input_product, step_plan, update_counts
from . import fused
from .fused import Saved, accumulator, launch_factors

try:
    from .. import _C  # noqa: F401  (registers torch.ops.bnlstm.*)

    _IMPORT_ERROR = None
except (ImportError, OSError) as error:  # not built, or built against another torch
    _IMPORT_ERROR = str(error)

name = "cuda"
# computed natively with float32 accumulators (float64 for float64 layers, to check the math)
dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def built() -> tuple[bool, str]:
    """Whether the extension imported, and why not."""
    if _IMPORT_ERROR is not None:
        return False, (f"the CUDA extension bnlstm_cuda._C is not built or does not import "
                       f"({_IMPORT_ERROR}); build it with a CUDA toolkit and a CUDA build of "
                       f"torch: pip install --no-build-isolation -e .")
    return True, "bnlstm_cuda._C imported"


def available() -> tuple[bool, str]:
    ok, reason = built()
    if not ok:
        return ok, reason
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, "CUDA C++ step kernels"


def supports(device: torch.device) -> Optional[str]:
    """Why tensors on `device` cannot run here, or None."""
    if device.type != "cuda":
        return (f"the CUDA extension runs on CUDA tensors only, got {device.type} tensors "
                f"(use backend='torch' there)")
    return None


def forward_loop(x, weights: LayerWeights, h0, c0, stats: RunningStats, batch_sizes, training,
                 momentum, eps, save):
    """The contract of backends.torch_ops.forward_loop; the steps run in bnlstm::forward_loop."""
    running = stats[:6]
    acc = accumulator(x.dtype)
    if not all(t.is_contiguous() and t.dtype == acc for t in running):
        # the kernels update rows in place, in the accumulator dtype (the module's): work on
        # copies, write back
        work = RunningStats(*(t.to(acc).contiguous() for t in running),
                            stats.num_batches_tracked)
        out = forward_loop(x, weights, h0, c0, work, batch_sizes, training, momentum, eps, save)
        for t, w in zip(running, work):
            t.copy_(w)
        return out
    plan = step_plan(batch_sizes, stats.max_length, training)
    factors = update_counts(stats, plan, momentum)
    w = weights
    xw = input_product(x, weights)
    y, h_n, c_n, cell, hw, stat_ih, stat_hh, stat_c = torch.ops.bnlstm.forward_loop(
        xw, w.weight_hh, w.bias, w.gamma_ih, w.gamma_hh, w.gamma_c, w.beta_c, h0, c0, *running,
        list(batch_sizes), [row for row, _ in plan],
        *launch_factors(factors, acc), float(eps),
    )
    saved = Saved(xw, hw, cell, stat_ih, stat_hh, stat_c) if save else None
    return y[1:], h_n, c_n, saved


def backward_loop(saved: Saved, weights: LayerWeights, c0, batch_sizes, batch_stats, dy, dh_n,
                  dc_n):
    """The contract of backends.torch_ops.backward_loop; the steps run in bnlstm::backward_loop
    (c0 is saved.cell[0] there)."""
    w = weights
    return tuple(torch.ops.bnlstm.backward_loop(
        saved.xw, saved.hw, saved.cell, w.weight_hh, w.bias, w.gamma_ih, w.gamma_hh, w.gamma_c,
        w.beta_c, saved.stat_ih, saved.stat_hh, saved.stat_c, dy, dh_n, dc_n, list(batch_sizes),
        [bool(u) for u in batch_stats],
    ))


if _IMPORT_ERROR is None:
    torch.library.register_fake("bnlstm::forward_loop")(fused.forward_loop_fake)
    torch.library.register_fake("bnlstm::backward_loop")(fused.backward_loop_fake)
