"""Edge cases that must work and match the oracle: empty and single-sequence batches, equal
lengths packed, batch_first views, gradients for any subset of the inputs, no_grad and
inference_mode, NaN and inf, features with no variance, determinism and steady memory."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from conftest import assert_rel_close, compare_with_reference, packed, run_and_backward
from torch.nn.utils.rnn import PackedSequence

import bnlstm_cuda
from bnlstm_cuda import BNLSTM, reference

D = torch.float64


def leaf(*shape):
    return torch.randn(*shape, dtype=D).requires_grad_()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_empty_batch(backend, training):
    """B=0 gives empty results in both modes; training has no sequence to take statistics from,
    so, as for one sequence, the buffers stay as they were."""
    model = BNLSTM(3, 8, num_layers=2, bidirectional=True, backend=backend).train(training)
    buffers = copy.deepcopy(dict(model.named_buffers()))
    x = torch.randn(5, 0, 3, requires_grad=True)
    out, (h_n, c_n) = model(x)
    assert out.shape == (5, 0, 16) and h_n.shape == c_n.shape == (4, 0, 8)
    (out.sum() + h_n.sum()).backward()
    assert x.grad.shape == x.shape
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    w, s = model.layer_weights(0), model.running_stats(0)
    y, (h, c) = bnlstm_cuda.bnlstm(x.detach(), *w, s, lengths=[], training=training,
                                   backend=backend)
    assert y.shape == (5, 0, 8) and h.shape == (0, 8)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_of_one(backend, training):
    """One sequence: eval uses the running rows; training has no batch variance and does too."""
    model = BNLSTM(3, 24, num_layers=2, max_length=4, backend=backend, dtype=D)
    compare_with_reference(model, lambda: leaf(6, 4, 3), steps=1)  # running rows away from init
    model.train(training)
    compare_with_reference(model, lambda: leaf(6, 1, 3), hx_fn=lambda: (leaf(2, 1, 24),
                                                                        leaf(2, 1, 24)))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_packed_equal_lengths(backend, training):
    model = BNLSTM(3, 8, bidirectional=True, backend=backend, dtype=D).train(training)

    def make():
        p = packed(torch.randn(5, 4, 3, dtype=D), [5, 5, 5, 5])
        return PackedSequence(p.data.requires_grad_(), p.batch_sizes, p.sorted_indices,
                              p.unsorted_indices)

    compare_with_reference(model, make)


def test_batch_first_non_contiguous(backend):
    model = BNLSTM(3, 24, batch_first=True, bidirectional=True, backend=backend, dtype=D)

    def make():
        x = torch.randn(8, 5, 3, dtype=D).transpose(0, 1)[1::2]  # (B=4, T=5, 3), strided
        assert not x.is_contiguous()
        return x.requires_grad_()

    compare_with_reference(model, make)


SUBSETS = [
    pytest.param({"input"}, id="input-only"),
    pytest.param({"h0", "c0"}, id="hx-only"),
    pytest.param({"c0", "gamma_c_l0"}, id="c0-and-one-gamma"),
    pytest.param({"weight_hh_l1", "bias_l0"}, id="two-weights"),
    pytest.param(set(), id="none"),
]


@pytest.mark.parametrize("wanted", SUBSETS)
def test_requires_grad_on_any_subset(backend, wanted):
    model = BNLSTM(3, 24, num_layers=2, max_length=4, backend=backend, dtype=D)
    for name, p in model.named_parameters():
        p.requires_grad_(name in wanted)
    ref = copy.deepcopy(model)
    x, h0, c0 = torch.randn(6, 5, 3, dtype=D), torch.randn(2, 5, 24, dtype=D), torch.randn(
        2, 5, 24, dtype=D)
    dy = torch.randn(6, 5, 24, dtype=D)
    results = []
    for m, forward in ((model, BNLSTM.__call__), (ref, reference.bnlstm_forward)):
        leaves = {n: t.clone().requires_grad_(n in wanted) for n, t in
                  (("input", x), ("h0", h0), ("c0", c0))}
        out, (h_n, c_n) = forward(m, leaves["input"], (leaves["h0"], leaves["c0"]))
        assert out.requires_grad == bool(wanted)
        if wanted:
            ((out * dy).sum() + c_n.sum()).backward()
        grads = {n: t.grad for n, t in [*leaves.items(), *m.named_parameters()]}
        results.append((out, grads))
    (out, grads), (out_ref, grads_ref) = results
    assert_rel_close(out, out_ref, name="output")
    for name, g in grads_ref.items():
        assert (grads[name] is None) == (name not in wanted), name
        if g is not None:
            assert_rel_close(grads[name], g, name="grad " + name)
    for (name, a), (_, b) in zip(model.named_buffers(), ref.named_buffers()):
        assert_rel_close(a, b, name=name)


def count_saved_tensors(fn):
    """Run fn, counting the tensors autograd saves for backward on the way."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        result = fn()
    return result, len(saved)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode], ids=["no_grad",
                                                                            "inference_mode"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_without_grad_saves_nothing(backend, mode, training):
    model = BNLSTM(3, 8, num_layers=2, max_length=4, backend=backend).train(training)
    twin = copy.deepcopy(model)
    x = torch.randn(6, 5, 3, requires_grad=True)
    (out, _), n_saved = count_saved_tensors(lambda: model(x))
    assert n_saved > 0
    with mode():
        (out2, (h_n, c_n)), n_saved = count_saved_tensors(lambda: twin(x))
    assert n_saved == 0
    assert out2.grad_fn is None and not out2.requires_grad
    assert torch.equal(out.detach(), out2)
    for (name, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_non_finite_input_propagates_as_the_oracle(backend, bad, training):
    """One bad element: in eval it spoils only its own sequence from its step on; in training
    it also enters that step's batch statistics. Never a crash, and nothing else."""
    model = BNLSTM(3, 8, max_length=6, backend=backend, dtype=D).train(training)
    ref = copy.deepcopy(model)
    x = torch.randn(6, 4, 3, dtype=D)
    x[2, 1, 0] = bad
    out, (h_n, _) = model(x)
    out_ref, (h_ref, _) = reference.bnlstm_forward(ref, x)
    for name, a, b in (("output", out, out_ref), ("h_n", h_n, h_ref)):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf()), name
        if training or bad != bad:  # in eval an inf saturates its gates: finite, as the oracle
            assert a.isnan().any(), name
        finite = b.isfinite()
        assert_rel_close(a[finite], b[finite], name=name)
    if not training:
        assert out[:, [0, 2, 3]].isfinite().all() and out[:2].isfinite().all()
    for (name, a), (_, b) in zip(model.named_buffers(), ref.named_buffers()):
        assert torch.equal(a.isnan(), b.isnan()), name


def test_features_without_variance(backend):
    """Features constant across the batch have batch variance 0: unit 0 of every gate gets no
    input and no recurrence (so its cell is constant too) and feature 5 no input. eps keeps the
    normalisation finite and the result is the oracle's."""
    model = BNLSTM(3, 24, bidirectional=True, max_length=6, backend=backend, dtype=D)
    with torch.no_grad():
        for sfx in ("", "_reverse"):
            weight_ih, weight_hh = getattr(model, "weight_ih_l0" + sfx), getattr(
                model, "weight_hh_l0" + sfx)
            weight_ih[[0, 5, 24, 48, 72]] = 0
            weight_hh[[0, 24, 48, 72]] = 0
    compare_with_reference(model, lambda: leaf(6, 5, 3), steps=1)
    assert model.running_var_ih_l0[:, [0, 5]].eq(0.9).all(), "var 0 moved in: 0.9 * 1 + 0.1 * 0"
    assert model.running_var_c_l0_reverse[:, 0].lt(0.9 + 1e-12).all()


def test_tiny_variance_around_a_large_mean_stays_finite(backend):
    """float32, features 1e4 apart from zero and 1e-3 apart from each other: the two-pass
    variance can not go negative, so no NaN appears from finite input."""
    model = BNLSTM(3, 8, backend=backend)
    x = (1e4 + 1e-3 * torch.randn(6, 5, 3)).requires_grad_()
    out, (h_n, c_n) = model(x)
    (out.sum() + c_n.sum()).backward()
    assert out.isfinite().all() and c_n.isfinite().all() and x.grad.isfinite().all()
    assert all(p.grad.isfinite().all() for p in model.parameters())
    assert all(b.isfinite().all() for b in model.buffers())


def test_bitwise_deterministic(backend):
    """Same inputs, same outputs, gradients and buffers, to the bit, run after run."""
    torch.manual_seed(0)
    model = BNLSTM(3, 24, num_layers=2, bidirectional=True, max_length=4, backend=backend)
    x = packed(torch.randn(7, 5, 3), [3, 7, 1, 5, 6])
    x = PackedSequence(x.data.requires_grad_(), x.batch_sizes, x.sorted_indices,
                       x.unsorted_indices)
    runs = []
    for _ in range(2):
        m = copy.deepcopy(model)
        upstream = {}
        torch.manual_seed(1)
        out, h_n, c_n, grads = run_and_backward(m, lambda m, i, h: m(i, h), x, None, upstream)
        runs.append((out, h_n, c_n, grads, dict(m.named_buffers())))
    (*first, grads, bufs), (*second, grads2, bufs2) = runs
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(torch.equal(grads[n], grads2[n]) for n in grads)
    assert all(torch.equal(bufs[n], bufs2[n]) for n in bufs)


def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.heavy
def test_no_memory_growth_over_1000_steps(backend):
    """A training loop holds no more live tensors after 1,000 steps than after 10: nothing
    (saved activations, graphs, statistics) accumulates across calls. (Fewer is possible:
    caches of earlier tests in the same process may be freed meanwhile.)"""
    model = BNLSTM(2, 4, max_length=3, backend=backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = packed(torch.randn(4, 3, 2), [4, 2, 3])

    def step():
        opt.zero_grad()
        out, (h_n, c_n) = model(x)
        (out.data.sum() + c_n.sum()).backward()
        opt.step()

    for _ in range(10):
        step()
    before = live_tensors()
    for _ in range(990):
        step()
    assert live_tensors() <= before
