"""The paper's extra pass: population statistics as the average of every batch's statistics."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_rel_close

from bnlstm_cuda import BNLSTM, compute_population_statistics


def test_extra_pass_averages_batch_statistics():
    torch.manual_seed(0)
    m = BNLSTM(3, 8, max_length=4, momentum=0.1, dropout=0.3, num_layers=2, dtype=torch.float64)
    m(torch.randn(4, 6, 3, dtype=torch.float64))  # stale statistics the pass must discard
    batches = [torch.randn(4, 6, 3, dtype=torch.float64) for _ in range(3)]
    m.eval()
    seen = compute_population_statistics(m, batches)
    assert seen == 3
    assert not m.training and m.momentum == 0.1 and m.dropout == 0.3
    # layer 0's input product does not depend on the recurrence: check it by hand
    products = [x @ m.weight_ih_l0.detach().t() for x in batches]  # (T, B, 4H) each
    mean = torch.stack([p.mean(1) for p in products]).mean(0)
    var = torch.stack([p.var(1, unbiased=True) for p in products]).mean(0)
    assert_rel_close(m.running_mean_ih_l0, mean, name="running_mean_ih")
    assert_rel_close(m.running_var_ih_l0, var, name="running_var_ih")
    assert torch.all(m.num_batches_tracked_l0 == 3)


def test_extra_pass_is_momentum_none_training_without_dropout():
    torch.manual_seed(0)
    m = BNLSTM(3, 8, max_length=5, num_layers=2, dropout=0.5)
    twin = BNLSTM(3, 8, max_length=5, num_layers=2, momentum=None)
    twin.load_state_dict(m.state_dict())
    batches = [torch.randn(5, 4, 3) for _ in range(2)]
    compute_population_statistics(m, batches)
    with torch.no_grad():
        for x in batches:
            twin(x)
    for (name, a), (_, b) in zip(m.named_buffers(), twin.named_buffers()):
        assert torch.equal(a, b), name


def test_extra_pass_needs_a_bnlstm():
    with pytest.raises(ValueError, match="model: expected a module containing"):
        compute_population_statistics(torch.nn.Linear(2, 2), [torch.randn(1, 2)])
