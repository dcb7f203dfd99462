"""The fused C++ step kernels of the extension bnlstm_cuda._C (csrc/, built by setup.py): on
CPU tensors one GEMM and one fused pass per step and block of hidden units (loops_cpu.cpp), on
CUDA tensors, where the extension was built with CUDA, each loop in one persistent cooperative
launch where the device holds it (persistent_fwd.cuh, persistent_bwd.cuh), else the same kernels
launched once per step. Both keep the buffers of triton_step.py and run
their time loops in C++.

The extension registers the ops `torch.ops.bnlstm.forward_loop` and
`torch.ops.bnlstm.backward_loop` (schemas in csrc/bnlstm.cpp; the running-statistics buffers are
`Tensor(a!)`, mutated in place). Their fake kernels live here, so shapes propagate under
FakeTensorMode and torch.compile without running a kernel. Autograd is the handwritten
backward of function.BNLSTMFunction, which calls backward_loop.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from typing import Optional

import torch

from ..input_norm import InputSaved, contribution, loop_input, with_input_grads
from ..layer_state import LayerWeights, RunningStats, Steps, accumulator
from . import fused
from .fused import Saved

BUILD_HINT = ("to build it: pip install --no-build-isolation -e . (needs a C++ compiler; with a "
              "CUDA build of torch and a CUDA toolkit it also builds the CUDA kernels)")


def _import_extension() -> Optional[str]:
    """Import bnlstm_cuda._C (which registers torch.ops.bnlstm.*); why it cannot be, or None.
    A missing module is said as such, not as Python's wording of an import from a package that
    is still initialising."""
    if importlib.util.find_spec("bnlstm_cuda._C") is None:
        return f"not built: bnlstm_cuda was installed without its C++ extension; {BUILD_HINT}"
    try:
        importlib.import_module("bnlstm_cuda._C")
    except (ImportError, OSError) as error:  # built against another torch, say
        return f"bnlstm_cuda._C does not import ({error}); rebuild it: {BUILD_HINT}"
    return None


_IMPORT_ERROR = _import_extension()
# asked once: torch.compile cannot trace the dispatcher query
_CUDA_KERNELS = _IMPORT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
    "bnlstm::forward_loop", "CUDA")

name = "cpp"


def cuda_kernels() -> bool:
    """Whether the extension was built with its CUDA kernels."""
    return _CUDA_KERNELS


@contextlib.contextmanager
def use_persistent(on: bool, ops=None):
    """Inside the block, the CUDA loops run persistent where the device holds them (on, the
    default) or only per step (off: to time the per-step launches); restored after it. ops: the
    extension's (torch.ops.bnlstm) by default."""
    if not isinstance(on, bool):
        raise TypeError(f"use_persistent: on must be a bool, got {type(on).__name__}")
    ops = torch.ops.bnlstm if ops is None else ops
    if not hasattr(ops, "use_persistent"):
        raise RuntimeError("use_persistent: the extension was built without its CUDA kernels")
    before = ops.use_persistent(on)
    try:
        yield
    finally:
        ops.use_persistent(before)


def dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """Computed natively on `device` (others run in float32): the CUDA kernels read and write
    half precision with float32 accumulators, the CPU kernels compute float32 and float64."""
    if device.type == "cuda":
        return (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    return (torch.float32, torch.float64)


def available() -> tuple[bool, str]:
    if _IMPORT_ERROR is not None:
        return False, _IMPORT_ERROR
    if cuda_kernels():
        return True, "fused C++ kernels: CPU, and CUDA (bnlstm_cuda._C built with CUDA)"
    return True, "fused C++ kernels: CPU (bnlstm_cuda._C built without CUDA)"


def supports(device: torch.device) -> Optional[str]:
    """Why tensors on `device` cannot run here, or None."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not cuda_kernels():
            return ("bnlstm_cuda._C was built without its CUDA kernels (a CPU build of torch or "
                    "no CUDA toolkit at build time)")
        return None
    return f"the C++ kernels run on CPU and CUDA tensors, got {device.type} tensors"


def input_kernels(device: torch.device, ops=torch.ops.bnlstm):
    """The input norm's statistics pass over the input product (csrc/input_norm_cpu.cpp) and
    the reusable buffers, on CPU tensors. None elsewhere (the torch ops of input_norm.py), and
    for other ops than the extension's (the emulation's)."""
    return ops if device.type == "cpu" and ops is torch.ops.bnlstm and _IMPORT_ERROR is None \
        else None


def _folds_input(device: torch.device, ops) -> bool:
    """Whether the loops normalise x W_ih^T in their steps (and do that norm's backward there):
    the extension's CPU loops. The others take u."""
    return input_kernels(device, ops) is not None


def forward_loop(inp: InputSaved, weights: LayerWeights, h0, c0, stats: RunningStats,
                 steps: Steps, eps, save, ops=torch.ops.bnlstm):
    """The contract of backends.torch_ops.forward_loop; the steps run in bnlstm::forward_loop
    (`ops`: the namespace of the ops; tests/test_emulation.py's build registers bnlstm_emu).
    On CPU tensors the loop reads x W_ih^T and normalises it as it goes: no u is made."""
    w = weights
    acc = accumulator(h0.dtype)
    if _folds_input(h0.device, ops):
        u, input_norm_args = inp.xw, {"input_stat": inp.stat, "gamma_ih": w.gamma_ih,
                                      "bias": w.bias}
    else:
        u, input_norm_args = loop_input(inp, w, save), {}

    def loop(stats):
        return ops.forward_loop(u, w.weight_hh, w.gamma_hh, w.gamma_c, w.beta_c, h0, c0,
                                *stats[2:6], *fused.launch_steps(steps, acc, eps), save=save,
                                **input_norm_args)

    y, h_n, c_n, cell, hw, stat_hh, stat_c = fused.with_running_rows(stats, fused.MUTATED, acc,
                                                                     loop)
    saved = Saved(hw, cell, stat_hh, stat_c) if save else None
    return y[1:], h_n, c_n, saved


def backward_loop(saved: Saved, inp: InputSaved, weights: LayerWeights, c0, steps: Steps, dy,
                  dh_n, dc_n, ops=torch.ops.bnlstm):
    """The contract of backends.torch_ops.backward_loop; the steps run in bnlstm::backward_loop
    (c0 is saved.cell[0] there). On CPU tensors they read x W_ih^T and do the input norm's
    backward in their steps; elsewhere u is recomputed from the input norm's saved tensors and
    that backward runs after the loop."""
    w = weights
    common = (saved.hw, saved.cell, w.weight_hh, w.gamma_hh, w.gamma_c, w.beta_c, saved.stat_hh,
              saved.stat_c, dy, dh_n, dc_n, steps.batch_sizes,
              [bool(b) for b in steps.batch_stats])
    if _folds_input(dy.device, ops):
        return tuple(ops.backward_loop(inp.xw, *common, input_stat=inp.stat,
                                       gamma_ih=w.gamma_ih, bias=w.bias))
    u = contribution(inp, weights)
    *grads, _, _ = ops.backward_loop(u, *common)  # the last two: empty, the loop's dpre is kept
    return with_input_grads(tuple(grads), inp, weights, steps)


def backward_loop_fake(u, hw, cell, weight_hh, gamma_hh, gamma_c, beta_c, stat_hh, stat_c, dy,
                       dh_n, dc_n, batch_sizes, use_batch, input_stat=None, gamma_ih=None,
                       bias=None):
    """The C++ backward op's results: fused.backward_loop_fake's, then dgamma_ih and dbias,
    (4H,) where the loop does the input norm's backward (input_stat), else empty."""
    grads = fused.backward_loop_fake(u, hw, cell, weight_hh, gamma_hh, gamma_c, beta_c, stat_hh,
                                     stat_c, dy, dh_n, dc_n, batch_sizes, use_batch)
    G = 0 if input_stat is None else u.shape[2]
    return (*grads, u.new_empty(G), u.new_empty(G))


if _IMPORT_ERROR is None:
    torch.library.register_fake("bnlstm::forward_loop")(fused.forward_loop_fake)

    torch.library.register_fake("bnlstm::backward_loop")(backward_loop_fake)

    @torch.library.register_fake("bnlstm::input_statistics")
    def _input_statistics_fake(xw, batch_sizes):
        return xw.new_empty(xw.shape[0], xw.shape[2]), xw.new_empty(xw.shape[0], xw.shape[2])

    @torch.library.register_fake("bnlstm::buffer")
    def _buffer_fake(like, size):
        return like.new_empty(size)
