"""The GPU-sized check of a fused backend through the backend contract (BNLSTM_TEST_DEVICE=cuda):
the oracle is the torch backend in float64 (itself proven against the reference); the yardstick
is the torch backend with its recurrence in the low dtype (LOW_DTYPE_TORCH); the kernels must
stay within RULE_K of it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, assert_rel_close
from test_triton import RULE_K

from bnlstm_cuda import BNLSTM
from bnlstm_cuda.backends import torch_ops
from bnlstm_cuda.function import BNLSTMFunction
from bnlstm_cuda.layer_state import RunningStats, plan_steps
from bnlstm_cuda.layout import batch_sizes_of

MUTATED = ["mean_ih", "var_ih", "mean_hh", "var_hh", "mean_c", "var_c"]
# The torch backend's loops in the layer's dtype (torch_ops.forward_loop keeps u in it)
LOW_DTYPE_TORCH = torch_ops
DTYPES = pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
    ids=["fp64", "fp32", "bf16", "fp16"])
CASES = pytest.mark.parametrize("B,H,T,packed,bias", [
    pytest.param(256, 1024, 64, False, True, id="B256-H1024-T64"),
    pytest.param(64, 1024, 512, False, True, id="B64-H1024-T512"),
    pytest.param(256, 256, 512, True, True, id="B256-H256-T512-packed"),
    pytest.param(100, 100, 784, True, False, id="B100-H100-T784-packed-nobias"),
    pytest.param(5, 24, 100, True, True, id="B5-H24-T100-packed"),
    pytest.param(33, 40, 1, False, True, id="B33-H40-T1"),
])


def _run(backend, dtype, tensors, stats, batch_sizes, upstream, training):
    leaves = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in tensors]
    # copies: a float64 run must not move the rows the other runs start from
    stats = RunningStats(*(s.clone() if not s.is_floating_point()
                           else s.to(torch.promote_types(dtype, torch.float32), copy=True)
                           for s in stats))
    steps = plan_steps(batch_sizes, stats, training, 0.1)
    y, h, c = BNLSTMFunction.apply(*leaves, stats, steps, 1e-5, backend)
    dy, dh, dc = (u.to(dtype) for u in upstream)
    ((y * dy).sum() + (h * dh).sum() + (c * dc).sum()).backward()
    return [y, h, c, *(t.grad for t in leaves if t is not None), *stats[:6]]


def check_against_torch_ops(backend, dtype, B, H, T, packed, bias, training, floor=None):
    """One layer through the Function with `backend`: float64 to 1e-10 of the torch backend in
    float64, lower precisions within RULE_K of the torch backend run in that dtype, or of
    `floor` (relative; the dtype's eps by default) where that is larger. Returns the backend's
    outputs, gradients and running rows."""
    torch.manual_seed(0)
    model = BNLSTM(H, H, max_length=T, bias=bias, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for s in model.running_stats(0)[:6]:  # running rows away from 0 and 1
            s.add_(0.5 * torch.rand_like(s))
    lengths = sorted(torch.randint(1, T + 1, (B,)).tolist(), reverse=True) if packed else None
    if lengths:
        lengths[0] = T  # a packed batch of T steps: the longest sequence runs all of them
    x = torch.randn(T, B, H, dtype=torch.float64, device=DEVICE)
    hx = [torch.randn(B, H, dtype=torch.float64, device=DEVICE) for _ in range(2)]
    tensors = [x, *hx, *model.layer_weights(0)]
    stats = model.running_stats(0)
    batch_sizes = batch_sizes_of(lengths, T, B)
    upstream = [torch.randn_like(t) for t in (x[..., :H], hx[0], hx[1])]
    oracle = _run(torch_ops, torch.float64, tensors, stats, batch_sizes, upstream, training)
    kernel = _run(backend, dtype, tensors, stats, batch_sizes, upstream, training)
    names = ["output", "h_n", "c_n", "input", "h0", "c0", "weight_ih", "weight_hh",
             *(["bias"] if bias else []), "gamma_ih", "gamma_hh", "gamma_c", "beta_c", *MUTATED]
    assert len(kernel) == len(oracle) == len(names)
    if dtype == torch.float64:
        for name, want, got in zip(names, oracle, kernel):
            assert_rel_close(got, want, name=name)
        return kernel
    plain = _run(LOW_DTYPE_TORCH, dtype, tensors, stats, batch_sizes, upstream, training)
    floor = torch.finfo(dtype).eps if floor is None else floor
    over = []  # every tensor over its bound, so one failing run says which and by how much
    for name, want, base, got in zip(names, oracle, plain, kernel):
        scale = want.double().norm().item() or 1.0
        err = (got.double() - want).norm().item() / scale
        bound = RULE_K * max((base.double() - want).norm().item() / scale, floor)
        if not err <= bound:
            over.append(f"{name} {err:.2e} > {bound:.2e}")
    assert not over, f"{dtype} kernel error over the bound: " + "; ".join(over)
    return kernel
