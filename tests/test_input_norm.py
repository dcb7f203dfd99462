"""The input's batch norm before and after the loop (input_norm.py): its running rows move as the
step loop moved them, above all the last row that every step past max_length - 1 shares."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_rel_close, compare_with_reference, packed
from torch.nn.utils.rnn import PackedSequence

from bnlstm_cuda import BNLSTM, input_norm
from bnlstm_cuda.backends import cpp
from bnlstm_cuda.layer_state import plan_steps

D = torch.float64
# 12 steps over 3 running-statistics rows: steps 2 .. 11 all update row 2; the packed lengths
# make the running rows shrink from 6 to 2, and the last step runs one sequence
LENGTHS = [12, 4, 11, 7, 2, 9]
# the input norm's passes: the torch ops, and the C++ backend's CPU kernels where built
KERNELS = pytest.mark.parametrize("kernels", [
    None, pytest.param("cpp", marks=pytest.mark.skipif(
        cpp.available()[0] is False, reason="bnlstm_cuda._C not built"))], ids=["torch", "cpp"])


def _kernels(which):
    return cpp.input_kernels(torch.device("cpu")) if which == "cpp" else None


def _packed_input(features):
    p = packed(torch.randn(12, len(LENGTHS), features, dtype=D), LENGTHS)
    return PackedSequence(p.data.requires_grad_(), p.batch_sizes, p.sorted_indices,
                          p.unsorted_indices)


@pytest.mark.heavy
@pytest.mark.parametrize("momentum", [0.3, None], ids=["momentum", "cumulative"])
def test_shared_last_row_moves_once_per_step_in_order(backend, momentum):
    model = BNLSTM(3, 8, max_length=3, momentum=momentum, dtype=D, backend=backend)
    compare_with_reference(model, lambda: _packed_input(3), steps=2)


def _sequential(xw, stats, steps, eps):
    """The step loop's reading of the input norm's statistics, one step after another."""
    mean_buf, var_buf = stats.mean_ih, stats.var_ih
    out = []
    for t, (n, row, use_batch, factor) in enumerate(zip(*steps)):
        z = xw[t, :n]
        if use_batch:
            mean, var = z.mean(0), z.var(0, unbiased=False)
            mean_buf[row] += factor * (mean - mean_buf[row])
            var_buf[row] += factor * (var * n / (n - 1) - var_buf[row])
        else:
            mean, var = mean_buf[row].clone(), var_buf[row].clone()
        out.append(torch.stack([mean, (var + eps).rsqrt()]))
    return torch.stack(out)


@KERNELS
@pytest.mark.parametrize("momentum", [0.3, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_statistics_of_all_steps_at_once_are_the_step_loops(momentum, training, kernels):
    model = BNLSTM(3, 8, max_length=3, momentum=momentum, dtype=D)
    with torch.no_grad():
        for t in model.running_stats(0)[:6]:
            t.add_(torch.rand_like(t))
    sizes = [sum(n > t for n in LENGTHS) for t in range(12)]
    xw = 2.0 + torch.randn(12, len(LENGTHS), 32, dtype=D)  # a mean well away from 0
    fast, slow = (type(model.running_stats(0))(*(t.clone() for t in model.running_stats(0)))
                  for _ in range(2))
    got = input_norm.statistics(xw, fast, plan_steps(sizes, fast, training, momentum), 1e-5,
                                _kernels(kernels))
    want = _sequential(xw, slow, plan_steps(sizes, slow, training, momentum), 1e-5)
    assert_rel_close(got, want, name="statistics")
    for name, a, b in zip(("mean_ih", "var_ih"), fast, slow):
        assert_rel_close(a, b, name=name)
    assert torch.equal(fast.num_batches_tracked, slow.num_batches_tracked)


@pytest.mark.skipif(cpp.available()[0] is False, reason="bnlstm_cuda._C not built")
def test_cpu_kernels_name_the_bad_argument():
    ops = cpp.input_kernels(torch.device("cpu"))
    xw = torch.zeros(3, 4, 8)
    with pytest.raises(RuntimeError, match=r"batch_sizes must be non-increasing"):
        ops.input_statistics(xw, [4, 5, 1])
    with pytest.raises(RuntimeError, match=r"batch_sizes must have T = 3 entries"):
        ops.input_statistics(xw, [4, 4])
    with pytest.raises(RuntimeError, match=r"xw must be float32 or float64"):
        ops.input_statistics(xw.half(), [4, 4, 4])
