"""The gate before timing: a provider whose output or gradients disagree with the reference
does not enter the table.

Scale-free rule (flash-attention's): against the reference run in float64, a provider's relative
error may be at most K times that of the reference itself run in the provider's dtype, plus
FLOOR, so a bf16 kernel is held to what bf16 can do and an fp32 one to fp32.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch

from bnlstm_cuda import reference

from .providers import Provider, reduced_to_lstm

K = 10.0
FLOOR = 1e-6


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    diff = (actual.double() - expected).norm().item()
    return diff / max(expected.norm().item(), 1e-300)


def outputs_and_grads(module, forward, x, dy, training: bool) -> dict[str, torch.Tensor]:
    """Output, the gradient of sum(output * dy) for the input and every parameter, by name."""
    module.train(training)
    x = x.detach().clone().requires_grad_()
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    out = forward(module, x)
    grads = torch.autograd.grad(out, [x, *(p for _, p in named)], dy.to(out.dtype))
    result = {"output": out.detach(), "grad input": grads[0]}
    result.update({f"grad {n}": g for (n, _), g in zip(named, grads[1:])})
    return result


def _reference(template, x, dy, training, dtype):
    module = copy.deepcopy(template).to(dtype)
    return outputs_and_grads(module, lambda m, i: reference.bnlstm_forward(m, i)[0],
                             x.to(dtype), dy.to(dtype), training)


def check_provider(provider: Provider, template, x: torch.Tensor, dy: torch.Tensor,
                   references: Optional[dict] = None) -> list[str]:
    """Compare `provider` with the reference on `template`'s weights; return one line per
    disagreement (empty when it passes). BN-LSTM providers are checked in eval and in training
    mode, on the output and every gradient; LSTM baselines in the reduced configuration, on
    the output and the input gradient. `references`: a dict kept across the providers of one
    shape, so the reference (a Python loop, seconds per run at GPU sizes) runs once per mode."""
    references = {} if references is None else references
    if provider.family == "lstm":
        template, settings, keys = reduced_to_lstm(template), (False,), ("output", "grad input")
    else:
        settings, keys = (False, True), None
    failures = []
    for training in settings:
        setting = (provider.family, training)
        if setting not in references:
            references[setting] = (_reference(template, x, dy, training, torch.float64),
                                   _reference(template, x, dy, training, x.dtype))
        exact, same_dtype = references[setting]
        module, forward = provider.build(template)
        # an LSTM (no dropout) computes the same in both modes, and cuDNN refuses a backward
        # in eval mode: LSTM baselines run in training mode against the eval-mode reference
        got = outputs_and_grads(module, forward, x, dy, training or provider.family == "lstm")
        for key in keys or exact:
            if key not in got:
                failures.append(f"{key}: missing")
                continue
            if got[key].shape != exact[key].shape:
                failures.append(f"{key}: shape {tuple(got[key].shape)}, expected "
                                f"{tuple(exact[key].shape)}")
                continue
            err = relative_error(got[key], exact[key])
            allowed = K * relative_error(same_dtype[key], exact[key]) + FLOOR
            if not err <= allowed:
                mode = "train" if training else "eval"
                failures.append(f"{mode} {key}: relative error {err:.2e} > allowed {allowed:.2e}")
    return failures
