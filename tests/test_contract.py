"""The public contract: parameter and buffer names and shapes, the paper's initialisation, and
dropout between layers."""

from __future__ import annotations

import pytest
import torch

from bnlstm_cuda import BNLSTM


def test_names_and_shapes():
    m = BNLSTM(3, 8, num_layers=2, bidirectional=True, max_length=6)
    params = {n: tuple(p.shape) for n, p in m.named_parameters()}
    buffers = {n: tuple(b.shape) for n, b in m.named_buffers()}
    for k, width in ((0, 3), (1, 16)):
        for sfx in ("", "_reverse"):
            s = f"_l{k}{sfx}"
            assert params["weight_ih" + s] == (32, width)
            assert params["weight_hh" + s] == (32, 8)
            assert params["bias" + s] == (32,)
            assert params["gamma_ih" + s] == params["gamma_hh" + s] == (32,)
            assert params["gamma_c" + s] == params["beta_c" + s] == (8,)
            for stat in ("mean_ih", "var_ih", "mean_hh", "var_hh"):
                assert buffers[f"running_{stat}{s}"] == (6, 32)
            for stat in ("mean_c", "var_c"):
                assert buffers[f"running_{stat}{s}"] == (6, 8)
            assert buffers["num_batches_tracked" + s] == (6,)
    assert len(params) == 4 * 7 and len(buffers) == 4 * 7
    assert "bias_l0" not in dict(BNLSTM(3, 8, bias=False).named_parameters())


def test_paper_initialisation():
    m = BNLSTM(5, 8, num_layers=2, gamma_init=0.1)
    H = 8
    for k in range(2):
        w = m.layer_weights(k)
        for gamma in (w.gamma_ih, w.gamma_hh, w.gamma_c):
            assert torch.all(gamma == 0.1)
        assert torch.all(w.beta_c == 0)
        assert torch.all(w.bias[H:2 * H] == 1) and torch.all(w.bias[:H] == 0)
        assert torch.all(w.bias[2 * H:] == 0)
        for block in w.weight_hh.detach().split(H):
            torch.testing.assert_close(block @ block.t(), torch.eye(H))
        for block in w.weight_ih.detach().split(H):  # (H, in): orthonormal columns or rows
            small = min(block.shape)
            gram = block.t() @ block if block.shape[1] == small else block @ block.t()
            torch.testing.assert_close(gram, torch.eye(small))
        s = m.running_stats(k)
        assert all(torch.all(t == 0) for t in (s.mean_ih, s.mean_hh, s.mean_c))
        assert all(torch.all(t == 1) for t in (s.var_ih, s.var_hh, s.var_c))



def test_dropout_between_layers():
    m = BNLSTM(3, 8, num_layers=2, dropout=0.5)
    x = torch.randn(5, 4, 3)
    no_drop = BNLSTM(3, 8, num_layers=2)
    no_drop.load_state_dict(m.state_dict())
    m.eval(), no_drop.eval()
    assert torch.equal(m(x)[0], no_drop(x)[0]), "eval ignores dropout"
    m.train(), no_drop.train()
    torch.manual_seed(1)
    a = m(x)[0]
    torch.manual_seed(1)
    assert torch.equal(a, m(x)[0]), "same seed, same mask"
    assert not torch.allclose(a, no_drop(x)[0]), "training applies dropout"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_factory_kwargs(dtype):
    m = BNLSTM(3, 8, dtype=dtype, device="cpu")
    assert all(p.dtype == dtype for p in m.parameters())
    assert m.num_batches_tracked_l0.dtype == torch.long
    out, (h, c) = m(torch.randn(4, 2, 3, dtype=dtype))
    assert out.dtype == h.dtype == c.dtype == dtype
