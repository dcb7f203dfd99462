"""Bad input gets a clear error naming the argument, never a crash or a silent wrong result."""

from __future__ import annotations

import types

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import bnlstm_cuda
from bnlstm_cuda import BNLSTM, backends


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(input_size=0), ValueError, "input_size"),
    (dict(hidden_size=-1), ValueError, "hidden_size"),
    (dict(hidden_size=2.5), TypeError, "hidden_size"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(max_length=0), ValueError, "max_length"),
    (dict(dropout=1.5), ValueError, "dropout"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(momentum=2), ValueError, "momentum"),
    (dict(eps=-1e-5), ValueError, "eps"),
    (dict(gamma_init=float("nan")), ValueError, "gamma_init"),
    (dict(gamma_init=float("inf")), ValueError, "gamma_init"),
    (dict(eps=float("inf")), ValueError, "eps: expected a finite number"),
    (dict(backend="cudnn"), ValueError, "backend"),
    (dict(backend=None), TypeError, "backend: expected a str"),
])
def test_constructor_arguments(kwargs, error, match):
    args = {"input_size": 3, "hidden_size": 8, **kwargs}
    with pytest.raises(error, match=match):
        BNLSTM(**args)


@pytest.fixture
def model():
    return BNLSTM(3, 8, num_layers=2)


@pytest.mark.parametrize("make,error,match", [
    (lambda: torch.randn(4, 2, 3, 1), ValueError, "input: expected a 2-D or 3-D"),
    (lambda: torch.randn(4), ValueError, "input: expected a 2-D or 3-D"),
    (lambda: torch.randn(4, 2, 5), ValueError, "input: expected 3 features"),
    (lambda: torch.randn(4, 2, 3, dtype=torch.float64), ValueError, "input: expected dtype"),
    (lambda: torch.randint(0, 3, (4, 2, 3)), TypeError, "input: expected a floating"),
    (lambda: torch.randn(0, 2, 3), ValueError, "input: expected at least one time step"),
    (lambda: [[1.0, 2.0, 3.0]], TypeError, "input: expected a Tensor or PackedSequence"),
    (lambda: torch.randn(4, 2, 3, device="meta"), ValueError, "input: expected device"),
    (lambda: torch.ones(4, 2, 3, dtype=torch.bool), TypeError, "input: expected a floating"),
    (lambda: torch.ones(4, 2, 3, dtype=torch.complex64), TypeError, "input: expected a float"),
    (lambda: torch.nn.utils.rnn.pack_sequence([torch.ones(3, 3, dtype=torch.long)]), TypeError,
     "input: expected a floating"),
])
def test_bad_input(model, make, error, match):
    with pytest.raises(error, match=match):
        model(make())


def _packed_with(sorted_indices, unsorted_indices):
    p = torch.nn.utils.rnn.pack_sequence([torch.ones(3, 3), torch.ones(2, 3)])
    return PackedSequence(p.data, p.batch_sizes, sorted_indices, unsorted_indices)


@pytest.mark.parametrize("make,match", [
    (lambda: _packed_with(torch.tensor([0, 1], device="meta"), torch.tensor([0, 1])),
     r"input.sorted_indices: expected device cpu \(the PackedSequence's data\), got meta"),
    (lambda: _packed_with(torch.tensor([0, 1]), torch.tensor([0, 1], device="meta")),
     "input.unsorted_indices: expected device cpu"),
    (lambda: _packed_with(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])),
     r"input.sorted_indices: expected a \(2,\) int64 or int32 tensor"),
    (lambda: _packed_with(torch.tensor([0, 1]), torch.tensor([0.0, 1.0])),
     r"input.unsorted_indices: expected a \(2,\) int64"),
])
def test_packed_indices_on_the_data_device(model, make, match):
    with pytest.raises(ValueError, match=match):
        model(make())


@pytest.mark.parametrize("hx,error,match", [
    (lambda: torch.zeros(2, 2, 8), TypeError, "hx: expected a tuple"),
    (lambda: (torch.zeros(1, 2, 8), torch.zeros(2, 2, 8)), ValueError, r"hx\[0\].*\(2, 2, 8\)"),
    (lambda: (torch.zeros(2, 2, 8), torch.zeros(2, 3, 8)), ValueError, r"hx\[1\].*\(2, 2, 8\)"),
    (lambda: (torch.zeros(2, 2, 7), torch.zeros(2, 2, 8)), ValueError, r"hx\[0\]"),
    (lambda: (torch.zeros(2, 2, 8).double(), torch.zeros(2, 2, 8)), ValueError, "dtype"),
    (lambda: (torch.zeros(2, 2, 8), torch.zeros(2, 2, 8, device="meta")), ValueError,
     r"hx\[1\] \(c_0\): expected device cpu"),
])
def test_bad_hx(model, hx, error, match):
    with pytest.raises(error, match=match):
        model(torch.randn(4, 2, 3), hx())


@pytest.fixture
def layer():
    m = BNLSTM(3, 8, max_length=5)
    return m.layer_weights(0), m.running_stats(0)


@pytest.mark.parametrize("lengths,error,match", [
    ([4, 0], ValueError, r"lengths: expected ints in \[1, 4\]"),
    ([5, 2], ValueError, r"lengths: expected ints in \[1, 4\]"),
    ([4], ValueError, "lengths: expected 2 entries"),
    ([], ValueError, "lengths: expected 2 entries"),
    ([2.0, 3.0], ValueError, "lengths: expected ints"),
    (torch.tensor([[4, 2]]), ValueError, "lengths: expected a 1-D integer tensor"),
    (torch.tensor([4.0, 2.0]), ValueError, "lengths: expected a 1-D integer tensor"),
    (torch.tensor([4, 2], device="meta"), ValueError, "lengths: expected a CPU tensor"),
    ("42", TypeError, "lengths: expected a list"),
])
def test_bad_lengths(layer, lengths, error, match):
    weights, stats = layer
    with pytest.raises(error, match=match):
        bnlstm_cuda.bnlstm(torch.randn(4, 2, 3), *weights, stats, lengths=lengths)


def test_bad_functional_arguments(layer):
    weights, stats = layer
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match="weight_hh: expected a floating"):
        bnlstm_cuda.bnlstm(x, weights.weight_ih, weights.weight_hh[:, :5], *weights[2:], stats)
    with pytest.raises(ValueError, match=r"weight_ih: expected a floating \(32, input_size\)"):
        bnlstm_cuda.bnlstm(x, weights.weight_ih[:16], *weights[1:], stats)
    with pytest.raises(ValueError, match="gamma_c: expected shape"):
        bnlstm_cuda.bnlstm(x, *weights[:5], weights.gamma_ih, weights.beta_c, stats)
    with pytest.raises(TypeError, match="running_stats: expected a bnlstm_cuda.RunningStats"):
        bnlstm_cuda.bnlstm(x, *weights, tuple(stats))
    short = stats._replace(mean_c=stats.mean_c[:, :4])
    with pytest.raises(ValueError, match=r"running_stats.mean_c: expected shape \(5, 8\)"):
        bnlstm_cuda.bnlstm(x, *weights, short)
    empty = type(stats)(*(t[:0] for t in stats))
    with pytest.raises(ValueError, match="running_stats: expected max_length >= 1"):
        bnlstm_cuda.bnlstm(x, *weights, empty)
    with pytest.raises(ValueError, match="momentum"):
        bnlstm_cuda.bnlstm(x, *weights, stats, momentum=1.5)
    with pytest.raises(ValueError, match=r"hx\[0\] \(h0\): expected shape \(2, 8\)"):
        bnlstm_cuda.bnlstm(x, *weights, stats, (torch.zeros(3, 8), torch.zeros(2, 8)))
    with pytest.raises(ValueError, match="backend"):
        bnlstm_cuda.bnlstm(x, *weights, stats, backend="nope")
    with pytest.raises(ValueError, match="input: expected a 3-D"):
        bnlstm_cuda.bnlstm(x[0], *weights, stats)
    with pytest.raises(TypeError, match="training: expected a bool, got str"):
        bnlstm_cuda.bnlstm(x, *weights, stats, training="no")
    with pytest.raises(TypeError, match="reverse: expected a bool, got int"):
        bnlstm_cuda.bnlstm(x, *weights, stats, reverse=1)
    with pytest.raises(TypeError, match="backend: expected a str"):
        bnlstm_cuda.bnlstm(x, *weights, stats, backend=["torch"])
    with pytest.raises(ValueError, match="eps: expected a finite number"):
        bnlstm_cuda.bnlstm(x, *weights, stats, eps=float("inf"))


def test_failed_calls_leave_buffers_untouched(layer):
    weights, stats = layer
    before = [t.clone() for t in stats]
    with pytest.raises(ValueError):
        bnlstm_cuda.bnlstm(torch.randn(4, 2, 3), *weights, stats, lengths=[4, 9])
    assert all(torch.equal(a, b) for a, b in zip(before, stats))


def test_unavailable_backend_says_why_and_what_runs(monkeypatch):
    unavailable = types.SimpleNamespace(name="fake", available=lambda: (False, "needs a GPU"))
    monkeypatch.setitem(backends._REGISTRY, "fake", unavailable)
    monkeypatch.setattr(backends, "NAMES", (*backends.NAMES, "fake"))
    model = BNLSTM(3, 8, backend="fake")
    with pytest.raises(ValueError, match=r"backend 'fake' cannot run on cpu: needs a GPU; "
                                         r"available here: \[.*'torch'"):
        model(torch.randn(4, 2, 3))


def test_hx_with_grad_and_input_without():
    model = BNLSTM(3, 8)
    for p in model.parameters():
        p.requires_grad_(False)
    hx = (torch.zeros(1, 2, 8, requires_grad=True), torch.zeros(1, 2, 8, requires_grad=True))
    model(torch.randn(4, 2, 3), hx)[0].sum().backward()
    assert hx[0].grad.abs().sum() > 0 and hx[1].grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden_size=2**40), "hidden_size=1099511627776"),
    (dict(input_size=2**60), "input_size=1152921504606846976"),
    (dict(max_length=2**60), "max_length=1152921504606846976"),
])
def test_sizes_no_device_can_hold_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BNLSTM(**{"input_size": 3, "hidden_size": 8, **kwargs})
