"""Shared test helpers: tolerances, inputs, and running a BNLSTM and the oracle side by side."""

from __future__ import annotations

import copy
import os

import pytest
import torch

# Tests run on BNLSTM_TEST_DEVICE (default cpu); there the Triton kernels run in the interpreter,
# which must be chosen before triton is first imported.
DEVICE = torch.device(os.environ.get("BNLSTM_TEST_DEVICE", "cpu"))
if DEVICE.type == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from bnlstm_cuda import available_backends, reference  # noqa: E402


def pytest_generate_tests(metafunc):
    """A test that takes `backend` runs once per backend that can run here; one marked `heavy`
    skips the backends the Triton interpreter would run on the CPU (TRITON_INTERPRET=1)."""
    if "backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):  # a test may pick its own
        names = mark.args[0]
        if "backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    heavy = metafunc.definition.get_closest_marker("heavy") is not None
    skip = pytest.mark.skip(reason="heavy under the Triton interpreter")
    params = [pytest.param(name, id=name, marks=[skip] if heavy and interpreted and name == "triton"
                           else []) for name, (ok, _) in available_backends().items() if ok]
    metafunc.parametrize("backend", params)


def assert_rel_close(actual, expected, tol=1e-10, name=""):
    """Scale-free comparison: ||actual - expected|| <= tol * ||expected|| (float64 checks use
    1e-10; an all-zero expected tensor must be matched to within 1e-12)."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = (actual.double() - expected.double()).norm().item()
    scale = expected.double().norm().item()
    assert err <= max(tol * scale, 1e-12), f"{name}: relative error {err / max(scale, 1e-300):.3e}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def packed(x, lengths):
    """A PackedSequence of the time-major padded x with unsorted lengths."""
    return pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)


def output_tensor(out):
    """Padded output of a tensor or PackedSequence result (original batch order)."""
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        return pad_packed_sequence(out)[0]
    return out


def run_and_backward(model, forward, input, hx, upstream):
    """Forward through `forward(model, input, hx)`, backprop the upstream gradient (drawn on the
    first call into the dict `upstream`, reused after) into the output and both final states;
    return outputs and every gradient by name."""
    out, (h_n, c_n) = forward(model, input, hx)
    y = output_tensor(out)
    if not upstream:
        upstream.update(dy=torch.randn_like(y), dh=torch.randn_like(h_n), dc=torch.randn_like(c_n))
    dy, dh, dc = upstream["dy"], upstream["dh"], upstream["dc"]
    ((y * dy).sum() + (h_n * dh).sum() + (c_n * dc).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    leaves = [input.data if hasattr(input, "batch_sizes") else input, *(hx or ())]
    for n, t in zip(("input", "h0", "c0"), leaves):
        if t.grad is not None:
            grads[n] = t.grad.clone()
            t.grad = None
    model.zero_grad()
    return y, h_n, c_n, grads


def assert_within_rounding(actual, exact, dtype=None, name=""):
    """Low-precision check, scale-free: the error of `actual` against the float64 `exact` is at
    most twice the error of rounding `exact` to `dtype` (default actual's), which is the best
    any implementation that hands back that dtype can do."""
    assert actual.shape == exact.shape, f"{name}: shape {actual.shape} != {exact.shape}"
    assert torch.isfinite(actual).all(), f"{name}: not finite"
    err = (actual.double() - exact).norm().item()
    floor = (exact.to(dtype or actual.dtype).double() - exact).norm().item()
    assert err <= 2 * floor + 1e-12 * exact.norm().item(), f"{name}: {err:.3e} > 2 x {floor:.3e}"


def compare_with_reference(model, make_input, steps=3, hx_fn=None):
    """Train-or-eval `model` and a copy through the oracle on `steps` fresh inputs (an SGD step
    between them) and compare outputs, final states, every gradient and every buffer."""
    ref = copy.deepcopy(model)
    opt_a = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(steps):
        input = make_input()
        hx = hx_fn() if hx_fn else None
        upstream = {}
        fast = run_and_backward(model, lambda m, i, h: m(i, h), input, hx, upstream)
        slow = run_and_backward(ref, reference.bnlstm_forward, input, hx, upstream)
        for name, a, b in zip(("output", "h_n", "c_n"), fast[:3], slow[:3]):
            assert_rel_close(a, b, name=name)
        assert fast[3].keys() == slow[3].keys()
        for name in slow[3]:
            assert_rel_close(fast[3][name], slow[3][name], name="grad " + name)
        for (name, a), (_, b) in zip(model.named_buffers(), ref.named_buffers()):
            assert_rel_close(a, b, name=name)
        opt_a.step()
        opt_b.step()
