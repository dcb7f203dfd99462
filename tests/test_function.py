"""The handwritten backward: float64 gradcheck of the op for one layer and direction, and every
gradient against autograd through the oracle with one shared upstream gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_rel_close

import bnlstm_cuda
from bnlstm_cuda import BNLSTM, reference

D = torch.float64


def layer_inputs(T, B, input_size, H, max_length, bias=True):
    model = BNLSTM(input_size, H, bias=bias, max_length=max_length, dtype=D)
    with torch.no_grad():  # away from the init so every gradient term is exercised
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        stats = model.running_stats(0)
        for t in stats[:-1]:
            t.add_(0.2 * torch.rand_like(t))
    weights = [None if w is None else w.detach().clone().requires_grad_()
               for w in model.layer_weights(0)]
    x = torch.randn(T, B, input_size, dtype=D, requires_grad=True)
    hx = [torch.randn(B, H, dtype=D, requires_grad=True) for _ in range(2)]
    return x, hx, weights, stats


SETTINGS = [
    pytest.param(dict(lengths=None, reverse=False), id="full"),
    pytest.param(dict(lengths=[2, 4, 1, 3], reverse=False), id="packed"),
    pytest.param(dict(lengths=[2, 4, 1, 3], reverse=True), id="packed-reverse"),
    pytest.param(dict(lengths=None, reverse=True), id="full-reverse"),
]


@pytest.mark.heavy
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(backend, setting, training):
    # max_length = T: a step that reads its running row (one running sequence) must not read one
    # that an earlier step of the same call moved, which gradcheck would see as a dependence
    x, hx, weights, stats = layer_inputs(T=4, B=4, input_size=2, H=3, max_length=4)

    def op(x, h0, c0, *weights):
        fresh = type(stats)(*(t.clone() for t in stats))  # every call sees the same buffers
        y, (h, c) = bnlstm_cuda.bnlstm(x, *weights, fresh, (h0, c0), training=training,
                                       backend=backend, **setting)
        return y, h, c

    assert torch.autograd.gradcheck(op, (x, *hx, *weights), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.heavy
def test_every_gradient_matches_the_oracle(backend, setting, training, bias, momentum):
    T, B, H = 7, 5, 24
    lengths = setting["lengths"] and [7, 3, 1, 6, 4]
    x, hx, weights, stats = layer_inputs(T, B, input_size=3, H=H, max_length=5, bias=bias)
    ref_stats = {k: v.clone() for k, v in stats._asdict().items()}
    dy = torch.randn(T, B, H, dtype=D)
    dh, dc = torch.randn(B, H, dtype=D), torch.randn(B, H, dtype=D)

    y, (h, c) = bnlstm_cuda.bnlstm(x, *weights, stats, tuple(hx), lengths=lengths,
                                   reverse=setting["reverse"], training=training,
                                   momentum=momentum, backend=backend)
    ((y * dy).sum() + (h * dh).sum() + (c * dc).sum()).backward()
    leaves = [x, *hx, *weights]
    fast = [None if t is None else t.grad for t in leaves]
    for t in leaves:
        if t is not None:
            t.grad = None

    lengths = lengths or [T] * B
    params = dict(zip(bnlstm_cuda.LayerWeights._fields, weights))
    outs, h_ref, c_ref = reference.layer([x[:n, b] for b, n in enumerate(lengths)], hx[0],
                                         hx[1], params, ref_stats, training, momentum, 1e-5,
                                         setting["reverse"])
    loss = sum((o * dy[:n, b]).sum() for b, (o, n) in enumerate(zip(outs, lengths)))
    (loss + (h_ref * dh).sum() + (c_ref * dc).sum()).backward()

    for b, n in enumerate(lengths):
        assert_rel_close(y[:n, b], outs[b], name=f"output {b}")
        assert not y[n:, b].any(), "padded steps must be zero"
    assert_rel_close(h, h_ref, name="h_n")
    assert_rel_close(c, c_ref, name="c_n")
    names = ["input", "h0", "c0", *bnlstm_cuda.LayerWeights._fields]
    for name, a, t in zip(names, fast, leaves):
        if t is not None:
            assert_rel_close(a, t.grad, name="grad " + name)
    for name, t in stats._asdict().items():
        assert_rel_close(t, ref_stats[name], name=name)


@pytest.mark.heavy
def test_no_grad_forward_matches_and_saves_nothing(backend):
    x, hx, weights, stats = layer_inputs(T=5, B=4, input_size=3, H=8, max_length=5)
    stats2 = copy.deepcopy(stats)
    y, _ = bnlstm_cuda.bnlstm(x, *weights, stats, tuple(hx), backend=backend)
    with torch.no_grad():
        y2, _ = bnlstm_cuda.bnlstm(x, *weights, stats2, tuple(hx), backend=backend)
    assert y2.grad_fn is None
    assert torch.equal(y.detach(), y2)
    for a, b in zip(stats, stats2):
        assert torch.equal(a, b)


def test_second_backward_raises():
    x, hx, weights, stats = layer_inputs(T=3, B=4, input_size=3, H=8, max_length=5)
    y, _ = bnlstm_cuda.bnlstm(x, *weights, stats, tuple(hx))
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()
