"""A quick correctness check of one backend on one device and dtype against bnlstm_cuda.reference,
by the tests' rule: what `python -m bnlstm_cuda.info` prints, and what the guarded "auto" runs
before it trusts a fused backend with a (device, dtype).

One small packed layer (T=5, B=4 with lengths 5, 2, 5, 3; H=8; training, so batch statistics and
running-row updates), forward and every gradient (input, h0, c0, every parameter), h_n, c_n and
the running buffers, with one shared random upstream gradient:
- float64 where the backend computes it natively: within 1e-10 of the float64 reference;
- below: finite, and the error against the float64 reference at most RULE_K times that of plain
  PyTorch in the same dtype (the reference; for a fused backend also the torch backend), with
  the dtype's epsilon as the floor (tests/test_triton.py gives the reasons for K = 8).
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import backends, reference
from .module import BNLSTM

RULE_K = 8.0
EXACT = 1e-10  # float64: relative error against the float64 reference
LENGTHS = (5, 2, 5, 3)
INPUT_SIZE, HIDDEN = 3, 8


class Result(NamedTuple):
    """The verdict and the result nearest its bound (error and bound are relative)."""

    backend: str
    device: torch.device
    dtype: torch.dtype
    ok: bool
    worst: str
    error: float
    bound: float


def check(backend: str, device: torch.device, dtype: torch.dtype) -> Result:
    """Run the backend named `backend` (by name, never "auto": the guard calls this) on `device`
    in `dtype` against the reference; the caller's random state, grad mode and autocast are
    left as they were."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad(), \
            torch.autocast(device.type, enabled=False):
        torch.manual_seed(0)
        case = _case(device)
        oracle = _results(reference.bnlstm_forward, torch.float64, *case)
        got = _results(_named(backend), dtype, *case)
        exact = dtype == torch.float64 and dtype in backends.resolve(backend, device).dtypes(
            device)
        plain = [] if exact else [_results(reference.bnlstm_forward, dtype, *case)]
        if not exact and backend != "torch":
            plain.append(_results(_named("torch"), dtype, *case))
    worst, worst_ratio = ("", 0.0, math.inf), -1.0  # (name, error, bound), error / bound
    for name, want in oracle.items():
        error, bound = _error_and_bound(got[name], want, [p[name] for p in plain], exact, dtype)
        if not error <= bound:
            return Result(backend, device, dtype, False, name, error, bound)
        ratio = error / bound if bound > 0 else 0.0
        if ratio > worst_ratio:
            worst, worst_ratio = (name, error, bound), ratio
    return Result(backend, device, dtype, True, *worst)


def _case(device):
    """A float64 model moved away from its init (running rows filled by one pass), an input,
    initial states and the upstream gradients of output, h_n and c_n."""
    model = BNLSTM(INPUT_SIZE, HIDDEN, max_length=4, dtype=torch.float64, backend="torch")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model(torch.randn(4, 6, INPUT_SIZE, dtype=torch.float64))
    T, B = max(LENGTHS), len(LENGTHS)
    x = torch.randn(T, B, INPUT_SIZE, dtype=torch.float64)
    hx = [torch.randn(1, B, HIDDEN, dtype=torch.float64) for _ in range(2)]
    upstream = [torch.randn(T, B, HIDDEN, dtype=torch.float64),
                *(torch.randn(1, B, HIDDEN, dtype=torch.float64) for _ in range(2))]
    return (model.to(device), x.to(device), [h.to(device) for h in hx],
            [u.to(device) for u in upstream])


def _named(backend: str):
    def forward(model, input, hx):
        model.backend = backend
        return model(input, hx)
    return forward


def _results(forward, dtype, model, x, hx, upstream) -> dict:
    """Every checked tensor of one forward and backward of a copy of `model` in `dtype`."""
    model = copy.deepcopy(model).to(dtype)
    x = x.detach().to(dtype).requires_grad_()
    hx = [h.detach().to(dtype).requires_grad_() for h in hx]
    out, (h_n, c_n) = forward(model, pack_padded_sequence(x, torch.tensor(LENGTHS),
                                                          enforce_sorted=False), tuple(hx))
    y = pad_packed_sequence(out)[0]
    dy, dh, dc = (u.to(dtype) for u in upstream)
    ((y * dy).sum() + (h_n * dh).sum() + (c_n * dc).sum()).backward()
    grads = {"grad " + name: p.grad for name, p in model.named_parameters()}
    return {"output": y, "h_n": h_n, "c_n": c_n, "grad input": x.grad, "grad h0": hx[0].grad,
            "grad c0": hx[1].grad, **grads, **dict(model.named_buffers())}


def _error_and_bound(got, want, plain, exact: bool, dtype) -> tuple[float, float]:
    """Relative error of `got` and the most it may be (inf error: not finite, or a count that
    differs)."""
    if not want.is_floating_point():
        return (0.0 if torch.equal(got.cpu(), want.cpu()) else math.inf), 0.0
    if not torch.isfinite(got).all():
        return math.inf, 0.0
    scale = want.double().norm().item()
    error = (got.double() - want.double()).norm().item() / max(scale, 1e-300)
    if exact:
        return error, max(EXACT, 1e-12 / max(scale, 1e-300))
    yardsticks = [e for e in ((p.double() - want.double()).norm().item() / max(scale, 1e-300)
                              for p in plain) if math.isfinite(e)]
    if not yardsticks:  # plain PyTorch overflowed: finiteness is what is left to check
        return error, math.inf
    return error, RULE_K * max(max(yardsticks), torch.finfo(dtype).eps)
