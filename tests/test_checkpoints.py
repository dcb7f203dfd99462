"""state_dict round trips through torch.save / torch.load(weights_only=True), running buffers
included; a checkpoint for another max_length is refused with a message naming it."""

from __future__ import annotations

import io

import pytest
import torch

from bnlstm_cuda import BNLSTM


def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_state_dict_round_trip(backend, dtype):
    kwargs = dict(num_layers=2, bidirectional=True, max_length=4, backend=backend, dtype=dtype)
    model = BNLSTM(3, 8, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # parameters and every buffer away from their initial values
        model(torch.randn(6, 5, 3, dtype=dtype))[0].float().square().sum().backward()
        opt.step()
    loaded = BNLSTM(3, 8, **kwargs)
    loaded.load_state_dict(round_trip(model.state_dict()))
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys()
    for name in state:
        assert state[name].dtype == again[name].dtype, name
        assert torch.equal(state[name], again[name]), name
    assert loaded.num_batches_tracked_l1_reverse.tolist() == [2, 2, 2, 6]  # row 3: steps 3-5
    x = torch.randn(7, 5, 3, dtype=dtype)
    assert torch.equal(model.eval()(x)[0], loaded.eval()(x)[0])


@pytest.mark.parametrize("saved,loading", [(4, 6), (6, 4)], ids=["fewer-rows", "more-rows"])
def test_other_max_length_is_refused(saved, loading):
    state = round_trip(torch.nn.Sequential(BNLSTM(3, 8, max_length=saved)).state_dict())
    model = torch.nn.Sequential(BNLSTM(3, 8, max_length=loading))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"max_length={saved} steps, this model has "
                                         f"max_length={loading}; build it with"):
        model.load_state_dict(state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
