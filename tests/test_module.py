"""BNLSTM against the oracle: outputs, final states, every gradient and every running buffer
after several training steps, across the nn.LSTM options; and the reduction to nn.LSTM."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_rel_close, compare_with_reference, packed
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from bnlstm_cuda import BNLSTM

D = torch.float64


def leaf(*shape):
    return torch.randn(*shape, dtype=D).requires_grad_()


def packed_leaf(T, lengths, features):
    p = packed(torch.randn(T, len(lengths), features, dtype=D), lengths)
    return PackedSequence(p.data.requires_grad_(), p.batch_sizes, p.sorted_indices,
                          p.unsorted_indices)


CASES = [
    pytest.param(dict(num_layers=1), dict(T=7, B=5), id="L1-T7-B5"),
    pytest.param(dict(num_layers=2), dict(T=7, B=5), id="L2"),
    pytest.param(dict(num_layers=1, bidirectional=True), dict(T=7, B=5), id="L1-bidir"),
    pytest.param(dict(num_layers=2, bidirectional=True), dict(T=6, B=4), id="L2-bidir"),
    pytest.param(dict(num_layers=2, batch_first=True), dict(T=7, B=5), id="L2-batch_first"),
    pytest.param(dict(num_layers=1, bias=False), dict(T=5, B=3), id="no-bias"),
    pytest.param(dict(num_layers=1, momentum=None), dict(T=5, B=3), id="momentum-None"),
    pytest.param(dict(num_layers=1, max_length=3), dict(T=7, B=5), id="T-over-max_length"),
    pytest.param(dict(num_layers=1), dict(T=1, B=2), id="T1-B2"),
]


@pytest.mark.heavy
@pytest.mark.parametrize("kwargs,shape", CASES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_tensor_input(backend, kwargs, shape, training):
    model = BNLSTM(3, 24, dtype=D, backend=backend,
                   **{"max_length": 10, **kwargs}).train(training)
    T, B = shape["T"], shape["B"]
    dims = (B, T, 3) if kwargs.get("batch_first") else (T, B, 3)
    L = model.num_layers * model.num_directions
    compare_with_reference(model, lambda: leaf(*dims), hx_fn=lambda: (leaf(L, B, 24),
                                                                      leaf(L, B, 24)))


@pytest.mark.heavy
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_packed_unsorted_lengths(backend, bidirectional, num_layers, training):
    model = BNLSTM(3, 24, num_layers=num_layers, bidirectional=bidirectional, max_length=4,
                   dtype=D, backend=backend).train(training)
    lengths = [3, 7, 1, 5, 6]  # unsorted; a length-1 sequence; step 6 runs one; T > max_length
    L = model.num_layers * model.num_directions
    compare_with_reference(model, lambda: packed_leaf(7, lengths, 3),
                           hx_fn=lambda: (leaf(L, 5, 24), leaf(L, 5, 24)))


def test_packed_output_keeps_the_input_packing():
    model = BNLSTM(3, 8, bidirectional=True, dtype=D)
    x = packed_leaf(6, [2, 6, 4], 3)
    out, (h_n, c_n) = model(x)
    assert torch.equal(out.batch_sizes, x.batch_sizes)
    assert torch.equal(out.sorted_indices, x.sorted_indices)
    assert out.data.shape == (x.data.shape[0], 16)
    padded, lengths = pad_packed_sequence(out)
    assert lengths.tolist() == [2, 6, 4]
    # h_n of the forward direction is each sequence's output at its own last step
    for b, n in enumerate([2, 6, 4]):
        assert torch.equal(h_n[0, b], padded[n - 1, b, :8])
        assert torch.equal(h_n[1, b], padded[0, b, 8:])


@pytest.mark.heavy
def test_eval_beyond_max_length_after_training(backend):
    model = BNLSTM(3, 24, num_layers=2, bidirectional=True, max_length=4, dtype=D,
                   backend=backend)
    compare_with_reference(model, lambda: leaf(4, 5, 3))  # train: fills every row
    model.eval()
    compare_with_reference(model, lambda: leaf(9, 5, 3))


def test_non_contiguous_input():
    model = BNLSTM(3, 24, num_layers=2, dtype=D)

    def make():
        x = torch.randn(6, 5, 7, dtype=D)[:, :, 1::2]
        assert not x.is_contiguous()
        return x.requires_grad_()

    compare_with_reference(model, make)


def test_unbatched_input():
    model = BNLSTM(3, 24, num_layers=2, dtype=D).eval()
    compare_with_reference(model, lambda: leaf(6, 3), hx_fn=lambda: (leaf(2, 24), leaf(2, 24)))


@pytest.mark.heavy
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
@pytest.mark.parametrize("use_packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_reduces_to_nn_lstm(backend, bidirectional, use_packed, bias):
    """Eval, running mean 0 / var 1, eps 0, gammas 1, beta_c 0: BN is the identity, so BNLSTM
    built by from_lstm (bias = bias_ih + bias_hh) is the nn.LSTM."""
    lstm = torch.nn.LSTM(3, 24, num_layers=2, bias=bias, bidirectional=bidirectional, dtype=D)
    model = BNLSTM.from_lstm(lstm, eps=0.0, gamma_init=1.0, backend=backend).eval()
    x = torch.randn(7, 5, 3, dtype=D)
    hx = (torch.randn(2 + 2 * bidirectional, 5, 24, dtype=D),) * 2
    if use_packed:
        x = packed(x, [3, 7, 1, 5, 6])
    out, (h, c) = model(x, hx)
    out_ref, (h_ref, c_ref) = lstm(x, hx)
    if use_packed:
        out, out_ref = out.data, out_ref.data
    assert_rel_close(out, out_ref, tol=1e-13, name="output")
    assert_rel_close(h, h_ref, tol=1e-13, name="h_n")
    assert_rel_close(c, c_ref, tol=1e-13, name="c_n")


def test_from_lstm_keeps_options_and_takes_overrides():
    lstm = torch.nn.LSTM(3, 8, num_layers=2, batch_first=True, dropout=0.25, dtype=D)
    model = BNLSTM.from_lstm(lstm, max_length=7, momentum=None)
    assert (model.input_size, model.hidden_size, model.num_layers) == (3, 8, 2)
    assert model.batch_first and model.dropout == 0.25 and not model.bidirectional
    assert model.max_length == 7 and model.momentum is None
    assert model.weight_hh_l1.dtype == D and model.weight_hh_l1.requires_grad
    assert torch.all(model.gamma_c_l1 == 0.1), "the paper's gamma_init unless overridden"
    assert torch.equal(model.weight_ih_l1, lstm.weight_ih_l1)
    assert torch.equal(model.bias_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
    assert model.weight_ih_l0.data_ptr() != lstm.weight_ih_l0.data_ptr(), "a copy"


@pytest.mark.parametrize("make,overrides,error,match", [
    (lambda: torch.nn.GRU(3, 8), {}, TypeError, "lstm: expected a torch.nn.LSTM, got GRU"),
    (lambda: torch.nn.LSTM(3, 8, proj_size=4), {}, ValueError, "proj_size"),
    (lambda: torch.nn.LSTM(3, 8), dict(hidden_size=16), TypeError, "hidden_size"),
    (lambda: torch.nn.LSTM(3, 8), dict(max_length=0), ValueError, "max_length"),
])
def test_from_lstm_bad_arguments(make, overrides, error, match):
    with pytest.raises(error, match=match):
        BNLSTM.from_lstm(make(), **overrides)
