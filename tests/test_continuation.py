"""Calls that continue a sequence: BNLSTM's start_step and BNLSTMCell's step.

A sequence cut into calls, with (h, c) carried and each call told the step it starts at, must
compute what one call over the whole sequence computes: outputs, final states, the running rows,
and the gradients when the calls form one autograd graph. The oracle takes start_step too, and
each fast path is also compared with it directly."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_rel_close, packed, run_and_backward
from torch.nn.utils.rnn import PackedSequence

from bnlstm_cuda import BNLSTM, BNLSTMCell, bnlstm, reference

D = torch.float64
MODES = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])


def _trained(model, steps=2):
    """Running rows that differ from their initial values, so that a wrong row shows in eval."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(model.max_length + 2, 5, model.input_size, dtype=D))
    return model


def _grads(model, leaves, outputs, upstream):
    loss = sum((o * u).sum() for o, u in zip(outputs, upstream))
    return torch.autograd.grad(loss, [*model.parameters(), *leaves])


def _assert_same_state(a, b):
    for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers()):
        if x.is_floating_point():
            assert_rel_close(x, y, name=name)
        else:
            assert torch.equal(x, y), name


@MODES
@pytest.mark.parametrize("cuts", [[3], [1, 5], [4, 8]], ids=["3", "1-5", "4-8"])
def test_split_calls_equal_one_call(backend, training, cuts):
    """T=9 steps over max_length=4 rows (steps 3..8 share the last row) in two or three calls
    equal one call, two layers, momentum 0.1, with an autograd graph across the calls."""
    if backend == "triton" and cuts != [1, 5]:
        pytest.skip("one cut set is enough under the Triton interpreter (slow)")
    whole = _trained(BNLSTM(3, 6, num_layers=2, max_length=4, dtype=D, backend=backend))
    whole.train(training)
    split = copy.deepcopy(whole)
    x = torch.randn(9, 4, 3, dtype=D, requires_grad=True)
    h0, c0 = (torch.randn(2, 4, 6, dtype=D, requires_grad=True) for _ in range(2))
    y, (h_n, c_n) = whole(x, (h0, c0))
    pieces, hx = [], (h0, c0)
    for start, stop in zip([0, *cuts], [*cuts, 9]):
        out, hx = split(x[start:stop], hx, start_step=start)
        pieces.append(out)
    y2 = torch.cat(pieces)
    for name, a, b in (("output", y2, y), ("h_n", hx[0], h_n), ("c_n", hx[1], c_n)):
        assert_rel_close(a, b, name=name)
    _assert_same_state(split, whole)
    upstream = [torch.randn_like(t) for t in (y, h_n, c_n)]
    want = _grads(whole, (x, h0, c0), (y, h_n, c_n), upstream)
    got = _grads(split, (x, h0, c0), (y2, *hx), upstream)
    names = [n for n, _ in whole.named_parameters()] + ["input", "h0", "c0"]
    for name, a, b in zip(names, got, want):
        assert_rel_close(a, b, name="grad " + name)


@MODES
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_start_step_against_oracle(backend, training, momentum):
    """Packed, unsorted lengths (a step with one running row), start_step 2 on 4 rows: the call's
    steps read or update rows 2, 3, 3, 3, 3, 3."""
    model = _trained(BNLSTM(3, 6, max_length=4, momentum=momentum, dtype=D, backend=backend))
    model.train(training)
    ref = copy.deepcopy(model)
    x = torch.randn(6, 4, 3, dtype=D)
    data = packed(x, [2, 6, 1, 4])
    data = PackedSequence(data.data.requires_grad_(), data.batch_sizes, data.sorted_indices,
                          data.unsorted_indices)
    upstream = {}
    fast = run_and_backward(model, lambda m, i, h: m(i, h, start_step=2), data, None, upstream)
    slow = run_and_backward(ref, lambda m, i, h: reference.bnlstm_forward(m, i, h, start_step=2),
                            data, None, upstream)
    for name, a, b in zip(("output", "h_n", "c_n"), fast[:3], slow[:3]):
        assert_rel_close(a, b, name=name)
    for name in slow[3]:
        assert_rel_close(fast[3][name], slow[3][name], name="grad " + name)
    _assert_same_state(model, ref)


def test_functional_start_step(backend):
    """The one-layer op takes start_step as the module does."""
    model = _trained(BNLSTM(3, 6, max_length=4, dtype=D, backend=backend)).eval()
    x = torch.randn(5, 3, 3, dtype=D)
    y, (h, c) = bnlstm(x, *model.layer_weights(0), model.running_stats(0), training=False,
                       backend=backend, start_step=3)
    want, (h_n, c_n) = reference.bnlstm_forward(model, x, start_step=3)
    assert_rel_close(y, want, name="output")
    assert_rel_close(c, c_n[0], name="c_n")


def test_start_step_changes_the_rows(backend):
    """Not a no-op: in eval a call at start_step 2 differs from one at 0 when rows differ."""
    model = _trained(BNLSTM(3, 6, max_length=4, dtype=D, backend=backend)).eval()
    x = torch.randn(3, 4, 3, dtype=D)
    assert (model(x, start_step=2)[0] - model(x)[0]).abs().max() > 1e-3


@MODES
def test_cell_calls_equal_one_layer(backend, training):
    """T=6 cell calls with step 0..5 over 4 rows (steps 3..5 share the last row) equal a
    one-layer BNLSTM call with the cell's state_dict: h, c, running rows, every gradient."""
    cell = BNLSTMCell(3, 6, max_length=4, dtype=D, backend=backend)
    rnn = BNLSTM(3, 6, max_length=4, dtype=D, backend=backend)
    rnn.load_state_dict(cell.state_dict())
    _trained(rnn)
    cell.load_state_dict(rnn.state_dict())
    cell.train(training), rnn.train(training)
    x = torch.randn(6, 4, 3, dtype=D, requires_grad=True)
    h0, c0 = (torch.randn(4, 6, dtype=D, requires_grad=True) for _ in range(2))
    y, (h_n, c_n) = rnn(x, (h0[None], c0[None]))
    hx, hs = (h0, c0), []
    for t in range(6):
        hx = cell(x[t], hx, step=t)
        hs.append(hx[0])
    assert_rel_close(torch.stack(hs), y, name="h per step")
    assert_rel_close(hx[1], c_n[0], name="c_n")
    _assert_same_state(cell, rnn)
    upstream = [torch.randn_like(y), torch.randn_like(c_n[0])]
    want = _grads(rnn, (x, h0, c0), (y, c_n[0]), upstream)
    got = _grads(cell, (x, h0, c0), (torch.stack(hs), hx[1]), upstream)
    for name, a, b in zip([n for n, _ in rnn.named_parameters()] + ["input", "h0", "c0"], got,
                          want):
        assert_rel_close(a, b, name="grad " + name)


def test_cell_unbatched_and_default_state(backend):
    rnn = _trained(BNLSTM(3, 6, max_length=4, dtype=D, backend=backend))
    cell = BNLSTMCell.from_bnlstm(rnn).eval()
    x = torch.randn(3, dtype=D)
    h, c = cell(x, step=2)
    h2, c2 = cell(x[None], (torch.zeros(1, 6, dtype=D), torch.zeros(1, 6, dtype=D)), step=2)
    assert h.shape == c.shape == (6,)
    assert_rel_close(h, h2[0], name="h")
    assert_rel_close(c, c2[0], name="c")


def test_cell_from_bnlstm_copies_one_layer_and_direction():
    rnn = _trained(BNLSTM(3, 6, num_layers=2, bidirectional=True, max_length=4, dtype=D))
    cell = BNLSTMCell.from_bnlstm(rnn, layer=1, reverse=True)
    assert cell.input_size == 12 and cell.max_length == 4 and cell.weight_ih_l0.dtype == D
    source = rnn.state_dict()
    for name, t in cell.state_dict().items():
        want = source[name[:-len("_l0")] + "_l1_reverse"]
        assert torch.equal(t, want), name
        assert t.data_ptr() != want.data_ptr(), name  # a copy: training the cell leaves rnn be


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cell_from_bnlstm_runs_that_direction(backend, reverse):
    """In eval, the cell of one direction of a bidirectional layer, stepped over the sequence in
    that direction's order, gives that direction's half of the layer's output."""
    rnn = _trained(BNLSTM(3, 6, bidirectional=True, max_length=4, dtype=D, backend=backend))
    rnn.eval()
    cell = BNLSTMCell.from_bnlstm(rnn, reverse=reverse).eval()
    x = torch.randn(6, 4, 3, dtype=D)
    y = rnn(x)[0][..., 6:] if reverse else rnn(x)[0][..., :6]
    order = list(range(6))[::-1] if reverse else list(range(6))
    hx, hs = None, {}
    for step, t in enumerate(order):
        hx = cell(x[t], hx, step=step)
        hs[t] = hx[0]
    assert_rel_close(torch.stack([hs[t] for t in range(6)]), y, name="output")


BAD_STEPS = [(-1, ValueError, ">= 0"), (1.0, TypeError, "expected an int"),
             (True, TypeError, "expected an int"), (2**63, ValueError, "below 2\\*\\*63"),
             (torch.tensor(1), TypeError, "expected an int")]


@pytest.mark.parametrize("value,error,match", BAD_STEPS, ids=["neg", "float", "bool", "2**63",
                                                               "tensor"])
def test_bad_step_is_refused_and_nothing_changes(value, error, match):
    rnn, cell = BNLSTM(3, 6, max_length=4, dtype=D), BNLSTMCell(3, 6, max_length=4, dtype=D)
    for model, call in ((rnn, lambda: rnn(torch.randn(2, 3, 3, dtype=D), start_step=value)),
                        (cell, lambda: cell(torch.randn(3, 3, dtype=D), step=value))):
        before = copy.deepcopy(model.state_dict())
        name = "start_step" if model is rnn else "step"
        with pytest.raises(error, match=f"{name}: .*{match}"):
            call()
        for key, t in model.state_dict().items():
            assert torch.equal(t, before[key]), key


def test_reverse_direction_refuses_a_continued_call():
    rnn = BNLSTM(3, 6, bidirectional=True, dtype=D)
    before = copy.deepcopy(rnn.state_dict())
    with pytest.raises(ValueError, match="start_step: a reverse direction"):
        rnn(torch.randn(2, 3, 3, dtype=D), start_step=1)
    rnn(torch.randn(2, 3, 3, dtype=D), start_step=0)  # 0 is the plain call
    m = rnn.running_stats(0)
    with pytest.raises(ValueError, match="start_step: a reverse direction"):
        bnlstm(torch.randn(2, 3, 3, dtype=D), *rnn.layer_weights(0), m, reverse=True,
               start_step=2)
    assert before.keys() == rnn.state_dict().keys()


@pytest.mark.parametrize("make_args,error,match", [
    (lambda: (torch.randn(2, 4, dtype=D),), ValueError, "input: expected 3 features"),
    (lambda: (torch.randn(2, 2, 3, dtype=D),), ValueError, "input: expected a 1-D or 2-D"),
    (lambda: (torch.randn(2, 3, dtype=D), (torch.zeros(3, 6, dtype=D),) * 2), ValueError,
     r"hx\[0\] \(h_0\): expected shape \(2, 6\)"),
    (lambda: (torch.randn(3, dtype=D), (torch.zeros(1, 6, dtype=D),) * 2), ValueError,
     r"hx\[0\] \(h_0\): expected shape \(6,\)"),
    (lambda: (torch.randn(2, 3, dtype=torch.float32),), ValueError, "input: expected dtype"),
], ids=["width", "rank", "hx-batch", "hx-unbatched", "dtype"])
def test_cell_bad_input(make_args, error, match):
    cell = BNLSTMCell(3, 6, max_length=4, dtype=D)
    before = copy.deepcopy(cell.state_dict())
    with pytest.raises(error, match=match):
        cell(*make_args())
    for key, t in cell.state_dict().items():
        assert torch.equal(t, before[key]), key


def test_from_bnlstm_bad_arguments():
    rnn = BNLSTM(3, 6, num_layers=2)
    with pytest.raises(ValueError, match=r"layer: expected an int in \[0, 1\]"):
        BNLSTMCell.from_bnlstm(rnn, layer=2)
    with pytest.raises(ValueError, match="reverse: the rnn is not bidirectional"):
        BNLSTMCell.from_bnlstm(rnn, reverse=True)
    with pytest.raises(TypeError, match="rnn: expected a bnlstm_cuda.BNLSTM"):
        BNLSTMCell.from_bnlstm(torch.nn.LSTM(3, 6))


def test_population_statistics_of_a_cell_equal_the_layer():
    """compute_population_statistics covers cells: stepping a cell over the batches gives the
    running rows a one-layer BNLSTM gets from whole sequences."""
    from bnlstm_cuda import compute_population_statistics

    rnn = BNLSTM(3, 6, max_length=4, momentum=0.1, dtype=D)
    cell = BNLSTMCell(3, 6, max_length=4, momentum=0.1, dtype=D)
    cell.load_state_dict(rnn.state_dict())
    batches = [torch.randn(6, 4, 3, dtype=D) for _ in range(3)]

    def step_cell(model, x):
        hx = None
        for t in range(x.shape[0]):
            hx = model(x[t], hx, step=t)

    assert compute_population_statistics(rnn, batches) == 3
    assert compute_population_statistics(cell, batches, forward=step_cell) == 3
    _assert_same_state(cell, rnn)
    assert cell.momentum == 0.1 and cell.training
