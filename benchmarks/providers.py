"""Providers: what the suite times, each built from one shared BNLSTM so all see the same weights.

A provider turns (template BNLSTM, shape) into a `Built`: a module and `forward(module, x) ->
output (T, B, H)`. BN-LSTM providers are judged against the eager reference on the template's
own weights; LSTM baselines against the reference in the configuration where a BN-LSTM reduces
to a plain LSTM (eval, running mean 0 / var 1, eps 0, gammas 1, beta 0), with the same weights.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Callable, NamedTuple

import torch
from torch import nn

import bnlstm_cuda
from bnlstm_cuda import reference
from bnlstm_cuda.backends import cpp, step_graphs, triton_step

from .eager_loop import eager_loop_forward

BASELINE = "nn.LSTM"  # cuDNN on a GPU: the row every ratio is against
REFERENCE = "reference"
EAGER_LOOP = "eager BN loop"  # per-step F.batch_norm, what users write today (eager_loop.py)


class Built(NamedTuple):
    module: nn.Module
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]


class Provider(NamedTuple):
    """name: the table's row label; family: "bnlstm" (judged against the reference on the
    template) or "lstm" (judged in the reduced configuration); build(template) -> Built."""

    name: str
    family: str
    build: Callable[[bnlstm_cuda.BNLSTM], Built]
    graphs: bool  # whether to try a CUDA-graph capture (the reference syncs with the host)
    # further timings as (launch label, context manager factory), each checked like the
    # default: e.g. the Triton backend with every step launched from Python beside its default
    # steady-state graph replay, and with the input product fused into its step launches
    variants: tuple = ()


def backend_provider(backend: str, device: torch.device) -> Provider:
    def build(template):
        module = bnlstm_cuda.BNLSTM(template.input_size, template.hidden_size,
                                    max_length=template.max_length, backend=backend,
                                    device=template.weight_ih_l0.device,
                                    dtype=template.weight_ih_l0.dtype)
        module.load_state_dict(template.state_dict())
        return Built(module, lambda m, x: m(x)[0])
    variants = ()
    if backend == "triton" and device.type == "cuda":
        # every step launched from Python; the input product inside each step's launch
        variants = (("per_step", step_graphs.launches_from_python),
                    ("fused_input", lambda: triton_step.use_input_product("fused")))
    if backend == "cpp" and device.type == "cuda":
        # the default runs each loop persistent where the device holds it; this, per step
        variants = (("per_step", lambda: cpp.use_persistent(False)),)
    return Provider(f"bnlstm[{backend}]", "bnlstm", build, graphs=True, variants=variants)


def _reference_build(template):
    return Built(copy.deepcopy(template), lambda m, x: reference.bnlstm_forward(m, x)[0])


def _eager_loop_build(template):
    return Built(copy.deepcopy(template), eager_loop_forward)


def _compiled_reference_build(template):
    compiled = torch.compile(reference.bnlstm_forward, dynamic=False)
    return Built(copy.deepcopy(template), lambda m, x: compiled(m, x)[0])


def lstm_weights_of(template) -> dict[str, torch.Tensor]:
    """nn.LSTM's state dict with the template's weights: one bias, split as bias_ih + 0."""
    bias = template.bias_l0.detach()
    return {"weight_ih_l0": template.weight_ih_l0.detach(),
            "weight_hh_l0": template.weight_hh_l0.detach(),
            "bias_ih_l0": bias, "bias_hh_l0": torch.zeros_like(bias)}


def _lstm_build(template):
    w = template.weight_ih_l0
    module = nn.LSTM(template.input_size, template.hidden_size, device=w.device, dtype=w.dtype)
    module.load_state_dict(lstm_weights_of(template))
    return Built(module, lambda m, x: m(x)[0])


class _FlashRNNLSTM(nn.Module):
    """FlashRNN's fused LSTM with nn.LSTM's weights (gates i, f, z, o as nn.LSTM's i, f, g, o):
    the input projection is a GEMM here, as it is inside cuDNN. Its weight layout is assumed
    (R[g, head] = W_hh[g]^T); the correctness check excludes it from the table if that is wrong."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self.lstm = lstm

    def forward(self, x):
        from flashrnn import flashrnn

        T, B, _ = x.shape
        H = self.lstm.hidden_size
        wx = (x @ self.lstm.weight_ih_l0.t()).transpose(0, 1).reshape(B, T, 4, 1, H)
        r = self.lstm.weight_hh_l0.reshape(4, 1, H, H).transpose(2, 3)
        b = (self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0).reshape(4, 1, H)
        dtype = str(x.dtype).replace("torch.", "")
        h, _ = flashrnn(wx.contiguous(), r.contiguous(), b, function="lstm",
                        backend="cuda_fused", dtype=dtype)
        return h[0][:, -T:].reshape(B, T, H).transpose(0, 1)


def _flashrnn_build(template):
    return Built(_FlashRNNLSTM(_lstm_build(template).module), lambda m, x: m(x))


def providers(device: torch.device) -> list[Provider]:
    """Every provider that can run on `device`: each bnlstm backend the registry reports
    available, nn.LSTM (cuDNN on a GPU), FlashRNN where installed (GPU only), the eager
    F.batch_norm loop users write today, the eager reference and the reference under
    torch.compile."""
    found = [backend_provider(name, device) for name, (ok, _) in
             bnlstm_cuda.available_backends().items() if ok]
    found.append(Provider(BASELINE, "lstm", _lstm_build, graphs=True))
    if device.type == "cuda" and importlib.util.find_spec("flashrnn") is not None:
        found.append(Provider("flashrnn", "lstm", _flashrnn_build, graphs=True))
    found.append(Provider(EAGER_LOOP, "bnlstm", _eager_loop_build, graphs=False))
    found.append(Provider(REFERENCE, "bnlstm", _reference_build, graphs=False))
    found.append(Provider("reference+compile", "bnlstm", _compiled_reference_build,
                          graphs=False))
    return found


def reduced_to_lstm(template) -> bnlstm_cuda.BNLSTM:
    """A copy of the template that computes exactly nn.LSTM with its weights (in eval mode)."""
    reduced = copy.deepcopy(template).eval()
    reduced.eps = 0.0
    with torch.no_grad():
        for name, p in reduced.named_parameters():
            if name.startswith("gamma"):
                p.fill_(1.0)
            elif name.startswith("beta"):
                p.zero_()
    reduced.reset_running_stats()
    return reduced
