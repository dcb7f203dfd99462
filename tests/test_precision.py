"""Half precision and autocast: outputs and gradients within twice the rounding of the exact
result, never inf or NaN from finite input, statistics in float32.

One layer (both directions): a stack rounds each layer's output to the low dtype, as nn.LSTM
does, so its exact twin would have to round between layers too."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_rel_close, assert_within_rounding

import bnlstm_cuda
from bnlstm_cuda import BNLSTM, reference

HALF = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]


def exact_twin(model):
    """A float64 copy of `model`: its parameters are exactly the low-precision ones."""
    return copy.deepcopy(model).double()


def forward_backward(model, forward, x, hx, dy, dh):
    """Outputs and every gradient for upstream gradients dy, dh (exact in the output dtype)."""
    x = x.detach().clone().requires_grad_()
    hx = tuple(t.detach().clone().requires_grad_() for t in hx)
    y, (h_n, c_n) = forward(model, x, hx)
    ((y * dy.to(y.dtype)).sum() + (h_n * dh.to(h_n.dtype)).sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    grads.update(input=x.grad, h0=hx[0].grad, c0=hx[1].grad)
    model.zero_grad()
    return (y, h_n, c_n), grads


def skip_native_half(backend):
    """These bounds hold for backends that compute half-precision layers in float32; one that
    computes them natively (bf16 state and products, as cuDNN) is held to the rule against
    plain PyTorch in the same dtype instead (test_triton.py)."""
    cpu = torch.device("cpu")
    if torch.float16 in bnlstm_cuda.backends.resolve(backend, cpu).dtypes(cpu):
        pytest.skip("computes half precision natively: see the rule in test_triton.py")


def test_half_precision_buffers_stay_float32():
    model = BNLSTM(3, 8, max_length=4)
    with torch.no_grad():
        model.running_var_ih_l0.uniform_(1e5, 1e6)  # overflows float16
    var = model.running_var_ih_l0.clone()
    for half in (torch.float16, torch.bfloat16):
        cast = copy.deepcopy(model).to(half)
        assert cast.weight_ih_l0.dtype == half
        assert all(b.dtype == torch.float32 for n, b in cast.named_buffers() if "running" in n)
        assert torch.equal(cast.running_var_ih_l0, var), "the float32 values survive the cast"
        assert BNLSTM(3, 8, dtype=half).running_mean_c_l0.dtype == torch.float32
    assert model.double().running_var_ih_l0.dtype == torch.float64


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_half_precision_large_values(backend, dtype, training):
    """Activations of size 1e3 (float16 holds them, their variance it does not): the layer
    computes in float32 and its results are as good as rounding allows."""
    skip_native_half(backend)
    model = BNLSTM(3, 24, bidirectional=True, max_length=4, backend=backend, dtype=dtype)
    twin = exact_twin(model)
    T, B = 6, 5
    for _ in range(2):  # running statistics from large activations, in both models
        x = (1000 * torch.randn(T, B, 3)).to(dtype)
        model(x)
        with torch.no_grad():
            reference.bnlstm_forward(twin, x.double())
    model.train(training), twin.train(training)
    x = (1000 * torch.randn(T, B, 3)).to(dtype)
    hx = tuple(torch.randn(2, B, 24).to(dtype) for _ in range(2))
    dy, dh = torch.randn(T, B, 48).to(dtype), torch.randn(2, B, 24).to(dtype)
    ours, grads = forward_backward(model, lambda m, x, h: m(x, h), x, hx, dy, dh)
    exact, exact_grads = forward_backward(twin, reference.bnlstm_forward, x.double(),
                                          tuple(t.double() for t in hx), dy.double(),
                                          dh.double())
    for name, a, b in zip(("output", "h_n", "c_n"), ours, exact):
        assert a.dtype == dtype
        assert_within_rounding(a, b, name=name)
    for name, g in exact_grads.items():
        assert_within_rounding(grads[name], g, name="grad " + name)
    for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert_rel_close(a, b, tol=1e-5, name=name)  # float32 statistics of the same values


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_autocast_bfloat16_on_cpu(backend, training):
    """Under autocast the layer runs as nn.LSTM does: input, states and weights in bfloat16,
    results in bfloat16, gradients in the parameters' float32, statistics in float32."""
    skip_native_half(backend)
    model = BNLSTM(3, 24, bidirectional=True, max_length=4, backend=backend)
    model.train(training)
    twin = exact_twin(model.to(torch.bfloat16)).train(training)  # what autocast computes with
    model.float()
    T, B = 5, 4
    x = torch.randn(T, B, 3)
    hx = tuple(torch.randn(2, B, 24) for _ in range(2))
    dy, dh = torch.randn(T, B, 48), torch.randn(2, B, 24)

    def autocast_forward(m, x, hx):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(x, hx)

    ours, grads = forward_backward(model, autocast_forward, x, hx, dy, dh)
    bf = torch.bfloat16
    exact, exact_grads = forward_backward(
        twin, reference.bnlstm_forward, x.to(bf).double(),
        tuple(t.to(bf).double() for t in hx), dy.to(bf).double(), dh.to(bf).double())
    for name, a, b in zip(("output", "h_n", "c_n"), ours, exact):
        assert a.dtype == bf
        assert_within_rounding(a, b, name=name)
    for name, g in exact_grads.items():
        assert grads[name].dtype == torch.float32
        assert_within_rounding(grads[name], g, dtype=bf, name="grad " + name)
    for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert a.dtype in (torch.float32, torch.long)
        assert_rel_close(a, b, tol=1e-5, name=name)


def test_autocast_takes_mixed_dtypes_but_not_float64():
    model = BNLSTM(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = model(torch.randn(4, 2, 3, dtype=torch.bfloat16),
                          (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8, dtype=torch.bfloat16)))
        assert y.dtype == h.dtype == c.dtype == torch.bfloat16
        with pytest.raises(ValueError, match="input: expected dtype torch.float32"):
            model(torch.randn(4, 2, 3, dtype=torch.float64))
        y, (h, c) = bnlstm_cuda.bnlstm(torch.randn(4, 2, 3), *model.layer_weights(0),
                                       model.running_stats(0), lengths=[4, 1])
        assert y.dtype == h.dtype == c.dtype == torch.bfloat16
    assert model.running_mean_ih_l0.dtype == torch.float32
