"""GPU-sized checks of the Triton kernels (BNLSTM_TEST_DEVICE=cuda; skipped elsewhere): the
shared contract check of gpu_contract.py, and CUDA-graph replay against eager launches."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE
from gpu_contract import CASES, DTYPES, check_against_torch_ops

from bnlstm_cuda import BNLSTM, function
from bnlstm_cuda.backends import step_graphs, triton_step
from bnlstm_cuda.layer_state import RunningStats, plan_steps
from bnlstm_cuda.layout import batch_sizes_of

pytestmark = pytest.mark.skipif(DEVICE.type != "cuda", reason="needs BNLSTM_TEST_DEVICE=cuda")


@DTYPES
@CASES
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_kernels_against_torch_ops(dtype, B, H, T, packed, bias, training):
    check_against_torch_ops(triton_step, dtype, B, H, T, packed, bias, training)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
@pytest.mark.parametrize("B,H,T,packed", [(256, 1024, 64, False), (100, 100, 784, True)],
                         ids=["B256-H1024-T64", "B100-H100-T784-packed"])
def test_fused_input_product_against_torch_ops(dtype, B, H, T, packed):
    with triton_step.use_input_product("fused"):
        check_against_torch_ops(triton_step, dtype, B, H, T, packed, True, True)


def test_graph_replays_match_eager_launches():
    """The same loop three times (eager, capture + replay, replay: the caching allocator hands
    back the same addresses) gives bitwise the eager result, forwards and backwards. One launch
    per step: at this width a layer would otherwise run as one persistent launch, no graph."""
    torch.manual_seed(0)
    B, H, T = 32, 64, 20
    model = BNLSTM(H, H, max_length=T, device=DEVICE)
    weights, stats = model.layer_weights(0), model.running_stats(0)
    x = torch.randn(T, B, H, device=DEVICE)
    h0, c0 = torch.zeros(B, H, device=DEVICE), torch.zeros(B, H, device=DEVICE)
    dy = torch.randn(T, B, H, device=DEVICE)
    lengths = sorted(torch.randint(1, T + 1, (B,)).tolist(), reverse=True)
    batch_sizes = batch_sizes_of(lengths, T, B)
    runs = []
    with triton_step.use_persistent(False):
        for _ in range(3):
            stats_copy = RunningStats(*(s.clone() for s in stats))
            steps = plan_steps(batch_sizes, stats_copy, True, 0.1)
            y, h, c, saved, inp = function._forward(triton_step, x, weights, h0, c0, stats_copy,
                                                    steps, 1e-5, True)
            grads = triton_step.backward_loop(saved, inp, weights, c0, steps, dy,
                                              torch.zeros_like(h), torch.zeros_like(c))
            runs.append([t.clone() for t in (y, h, c, *grads, *stats_copy)])
            # free, so the next loop gets the same addresses
            del y, h, c, saved, inp, grads, stats_copy
    assert any(entry is not None for entry in step_graphs.GRAPHS.entries.values())
    n_grads = len(runs[0]) - 3 - len(RunningStats._fields)
    names = ["y", "h_n", "c_n", *(f"grad {i}" for i in range(n_grads)), *RunningStats._fields]
    for later in runs[1:]:
        for name, a, b in zip(names, runs[0], later, strict=True):
            assert torch.equal(a, b), f"{name}: {(a - b).abs().max().item():.3e} off"
