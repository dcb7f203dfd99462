"""GPU-sized checks of the Triton kernels (BNLSTM_TEST_DEVICE=cuda; skipped elsewhere).

Through the backend contract (the autograd Function with one backend): the oracle is the torch
backend in float64 (itself proven against the reference), the yardstick is the torch backend run
entirely in the low dtype, and the kernels must stay within the rule of test_triton.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE
from test_triton import RULE_K

from bnlstm_cuda import BNLSTM
from bnlstm_cuda.backends import torch_ops, triton_step
from bnlstm_cuda.function import BNLSTMFunction
from bnlstm_cuda.layer_state import RunningStats
from bnlstm_cuda.layout import batch_sizes_of

pytestmark = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs BNLSTM_TEST_DEVICE=cuda")


def _run(backend, dtype, tensors, stats, batch_sizes, upstream, training):
    leaves = [t.detach().to(dtype).requires_grad_() for t in tensors]
    stats = RunningStats(*(s.clone() if not s.is_floating_point()
                           else s.to(torch.promote_types(dtype, torch.float32))
                           for s in stats))
    y, h, c = BNLSTMFunction.apply(*leaves, stats, batch_sizes, training, 0.1, 1e-5, backend)
    dy, dh, dc = (u.to(dtype) for u in upstream)
    ((y * dy).sum() + (h * dh).sum() + (c * dc).sum()).backward()
    return [y, h, c, *(t.grad for t in leaves), *stats[:6]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("B,H,T,packed", [
    pytest.param(256, 1024, 64, False, id="B256-H1024-T64"),
    pytest.param(64, 1024, 512, False, id="B64-H1024-T512"),
    pytest.param(100, 100, 784, True, id="B100-H100-T784-packed"),
    pytest.param(5, 24, 100, True, id="B5-H24-T100-packed"),
])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_kernels_against_torch_ops(dtype, B, H, T, packed, training):
    torch.manual_seed(0)
    model = BNLSTM(H, H, max_length=T, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    lengths = sorted(torch.randint(1, T + 1, (B,)).tolist(), reverse=True) if packed else None
    x = torch.randn(T, B, H, dtype=torch.float64, device=DEVICE)
    hx = [torch.randn(B, H, dtype=torch.float64, device=DEVICE) for _ in range(2)]
    tensors = [x, *hx, *model.layer_weights(0)]
    stats = model.running_stats(0)
    batch_sizes = batch_sizes_of(lengths, T, B)
    upstream = [torch.randn_like(t) for t in (x[..., :H], hx[0], hx[1])]
    oracle = _run(torch_ops, torch.float64, tensors, stats, batch_sizes, upstream, training)
    plain = _run(torch_ops, dtype, tensors, stats, batch_sizes, upstream, training)
    kernel = _run(triton_step, dtype, tensors, stats, batch_sizes, upstream, training)
    names = ["output", "h_n", "c_n", "input", "h0", "c0", "weight_ih", "weight_hh", "bias",
             "gamma_ih", "gamma_hh", "gamma_c", "beta_c", "mean_ih", "var_ih", "mean_hh",
             "var_hh", "mean_c", "var_c"]
    floor = torch.finfo(dtype).eps
    for name, want, base, got in zip(names, oracle, plain, kernel):
        scale = want.double().norm().item() or 1.0
        err = (got.double() - want).norm().item() / scale
        bound = RULE_K * max((base.double() - want).norm().item() / scale, floor)
        assert err <= bound, f"{name}: kernel error {err:.2e} > {bound:.2e}"


def test_graph_replays_match_eager_launches():
    """The same loop three times (eager, capture + replay, replay: the caching allocator hands
    back the same addresses) gives bitwise the eager result, forwards and backwards."""
    torch.manual_seed(0)
    B, H, T = 32, 64, 20
    model = BNLSTM(H, H, max_length=T, device=DEVICE)
    weights, stats = model.layer_weights(0), model.running_stats(0)
    x = torch.randn(T, B, H, device=DEVICE)
    xw = x @ weights.weight_ih.t()
    h0, c0 = torch.zeros(B, H, device=DEVICE), torch.zeros(B, H, device=DEVICE)
    dy = torch.randn(T, B, H, device=DEVICE)
    lengths = sorted(torch.randint(1, T + 1, (B,)).tolist(), reverse=True)
    batch_sizes = batch_sizes_of(lengths, T, B)
    runs = []
    for _ in range(3):
        stats_copy = RunningStats(*(s.clone() for s in stats))
        y, h, c, saved = triton_step.forward_loop(xw, weights, h0, c0, stats_copy, batch_sizes,
                                                  True, 0.1, 1e-5, True)
        grads = triton_step.backward_loop(saved, weights, c0, batch_sizes, [True] * T, dy,
                                          torch.zeros_like(h), torch.zeros_like(c))
        runs.append([t.clone() for t in (y, h, c, *grads, *stats_copy)])
        del y, h, c, saved, grads, stats_copy  # free, so the next loop gets the same addresses
    assert any(entry is not None for entry in triton_step.GRAPHS.entries.values())
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)
