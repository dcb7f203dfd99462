"""The fused Triton step kernels against the oracle, under the Triton interpreter on CPU tensors
(and on a GPU when BNLSTM_TEST_DEVICE=cuda).

Two checks on the output, both final states, every gradient and every running buffer:
- float64: the kernels run with float64 accumulators and must match the float64 oracle to
  float64 rounding (1e-10 relative), which proves the math;
- lower precisions, the scale-free rule (flash-attention's): the kernel's error against the
  float64 oracle is at most RULE_K times that of plain PyTorch in the same dtype (the reference;
  in float32 also the torch backend, the larger error; the dtype's epsilon as the floor), and
  every result is finite (where plain float16 overflows, finiteness is the whole check).
RULE_K = 8, not flash-attention's 2, for float32: with the math proven in float64, what remains
is rounding. The kernels build sigmoid and tanh from exp (a few ulps, as on the GPU) where torch
rounds them correctly, and per-feature batch sums of tiny batches cancel (B=2 batch norm is
ill-conditioned), which amplifies those ulps: measured, the two plain implementations differ
by up to 3x per tensor, and the kernels reach 5.4x the larger (gamma_ih, T=1, B=17). A wrong
term gives errors of 1e-2 and more, so the check stays sharp.
"""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from conftest import DEVICE, assert_rel_close, packed, run_and_backward
from torch.nn.utils.rnn import PackedSequence

import bnlstm_cuda
from bnlstm_cuda import BNLSTM, reference
from bnlstm_cuda.backends import torch_ops, triton_step

triton = pytest.importorskip("triton")
tl = triton.language
RULE_K = 8.0
triton_ok, why = bnlstm_cuda.available_backends()["triton"]
pytestmark = pytest.mark.skipif(not triton_ok, reason=why)


def _cast_input(x, dtype):
    if isinstance(x, PackedSequence):
        indices = (None if i is None else i.to(DEVICE)
                   for i in (x.sorted_indices, x.unsorted_indices))
        return PackedSequence(x.data.detach().to(DEVICE, dtype).requires_grad_(), x.batch_sizes,
                              *indices)
    return x.detach().to(DEVICE, dtype).requires_grad_()


def _results(model, forward, x, hx, upstream, dtype):
    hx = tuple(_cast_input(t, dtype) for t in hx) if hx else None
    y, h, c, grads = run_and_backward(model, forward, _cast_input(x, dtype), hx, upstream)
    return {"output": y, "h_n": h, "c_n": c, **grads, **dict(model.named_buffers())}


def _relative_error(a, b):
    return (a.double() - b.double()).norm().item() / max(b.double().norm().item(), 1e-300)


def _module_run(backend):
    def forward(model, input, hx):
        model.backend = backend
        return model(input, hx)
    return forward


def check_rule(model64, x, hx=None, dtypes=(torch.float64, torch.float32)):
    """Run the oracle in float64, then per dtype the Triton backend (and, below float64, the
    plain implementations) on copies of model64, and check every result. On the CPU all of it
    runs on one thread: plain PyTorch's float32 rounding, the yardstick, changes with the thread
    count (measured for d beta_c, T=7, B=17, seed 0: the torch backend's error 1.0e-6 on one
    thread, 4.2e-7 on two, the kernel's 3.5e-6 either way, and 0.6-3.5x the plain errors at
    seeds 1-7), so one thread gives every CPU machine the same bound."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_rule(model64, x, hx, dtypes)
    finally:
        torch.set_num_threads(threads)


def _check_rule(model64, x, hx, dtypes):
    model64 = model64.to(DEVICE)
    upstream = {}
    oracle = _results(copy.deepcopy(model64), reference.bnlstm_forward, x, hx, upstream,
                      torch.float64)

    def run(forward, dtype):
        low_up = {k: v.to(dtype) for k, v in upstream.items()}
        return _results(copy.deepcopy(model64).to(dtype), forward, x, hx, low_up, dtype)

    for dtype in dtypes:
        kernel = run(_module_run("triton"), dtype)
        assert kernel.keys() == oracle.keys()
        for name, got in kernel.items():
            assert torch.isfinite(got).all(), f"{dtype} {name}: not finite"
        if dtype == torch.float64:
            for name, want in oracle.items():
                assert_rel_close(kernel[name], want, name=name)
            continue
        plain = [run(reference.bnlstm_forward, dtype)]
        if dtype in torch_ops.dtypes(DEVICE):  # the torch backend runs half precision in float32
            plain.append(run(_module_run("torch"), dtype))
        floor = torch.finfo(dtype).eps
        for name, want in oracle.items():
            if not want.is_floating_point():
                assert torch.equal(kernel[name].cpu(), want.cpu()), name
                continue
            err = _relative_error(kernel[name], want)
            yardsticks = [e for e in (_relative_error(p[name], want) for p in plain)
                          if math.isfinite(e)]
            if not yardsticks:  # plain PyTorch overflowed: finiteness is what is left to check
                continue
            bound = RULE_K * max(max(yardsticks), floor)
            assert err <= bound, f"{dtype} {name}: kernel error {err:.2e} > {bound:.2e}"


def make_model(input_size=3, hidden=8, training=True, max_length=8, **kwargs):
    """A float64 BNLSTM moved away from its init, with running statistics filled by one pass."""
    model = BNLSTM(input_size, hidden, max_length=max_length, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model(torch.randn(max_length, 6, input_size, dtype=torch.float64))
    return model.train(training).to(DEVICE)


def _x(T, B, input_size=3):
    return torch.randn(T, B, input_size, dtype=torch.float64)


@pytest.mark.parametrize("B", [2, 5, 17])
@pytest.mark.parametrize("H", [8, 24])
def test_shapes_train(B, H):
    check_rule(make_model(hidden=H), _x(7, B))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("B", [2, 17])
def test_single_step(training, B):
    check_rule(make_model(hidden=24, training=training), _x(1, B))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_packed_unsorted_bidirectional_two_layers(training):
    # a length-1 sequence; at step 6 one sequence runs. No step runs exactly two: a batch norm
    # of two rows has a backward that is all cancellation, and behind a first layer it makes the
    # float32 error of the stack one heavy-tailed sample of that layer's rounding (with lengths
    # [3, 7, 1, 5, 6], seeds 0-5: the kernels' worst ratio to the yardstick 1.1-8.3, and
    # 1.3-3.0 before the input norm left the loop; per layer the two agree. One layer with such
    # a step is test_shapes_train's B=2)
    lengths = [3, 7, 1, 5, 7]
    model = make_model(hidden=8, training=training, num_layers=2, bidirectional=True,
                       max_length=4)
    hx = tuple(torch.randn(4, 5, 8, dtype=torch.float64) for _ in range(2))
    check_rule(model, packed(_x(7, 5), lengths), hx)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_beyond_max_length(training):
    check_rule(make_model(hidden=24, training=training, max_length=3), _x(7, 5))


def test_no_bias_cumulative_momentum():
    check_rule(make_model(hidden=8, bias=False, momentum=None), _x(5, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision(dtype):
    lengths = [4, 7, 2, 7, 5]
    check_rule(make_model(hidden=24, num_layers=2), packed(_x(7, 5), lengths), dtypes=(dtype,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_large_values(dtype):
    """Inputs of size 1e3: float16 holds the products, not their variance; the kernels' fp32
    statistics keep everything finite (the plain float16 reference may not be)."""
    model = make_model(hidden=24, bidirectional=True, max_length=4)
    check_rule(model, 1000 * _x(6, 5), dtypes=(dtype,))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_autocast_is_the_half_precision_model(training):
    """Under autocast a float32 model computes exactly what its bfloat16 copy computes (whose
    accuracy the rule checks): outputs, float32 parameter gradients and float32 statistics."""
    model = make_model(hidden=8, bidirectional=True).float().train(training)
    model.backend = "triton"
    half = copy.deepcopy(model).to(torch.bfloat16)
    x, dy = torch.randn(5, 4, 3, device=DEVICE), torch.randn(5, 4, 16, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y, _ = model(x)
    y_half, _ = half(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_half)
    (y.float() * dy).sum().backward()
    (y_half.float() * dy).sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), half.named_parameters()):
        assert p.grad.dtype == torch.float32 and torch.equal(p.grad, q.grad.float()), name
    for (name, a), (_, b) in zip(model.named_buffers(), half.named_buffers()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_compile_fullgraph(training):
    """The launches are custom ops (bnlstm_triton::*), so torch.compile takes the whole model as
    one graph and gives what eager gives: outputs, gradients and buffers, two steps running."""
    torch._dynamo.reset()
    model = make_model(hidden=8, bidirectional=True).float().train(training)
    model.backend = "triton"
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    for _ in range(2):
        x = torch.randn(4, 5, 3, device=DEVICE)
        results = []
        for m, run in ((model, model), (compiled_model, compiled)):
            y, (h, c) = run(x)
            (y.sum() + c.sum()).backward()
            results.append([y, c, *(p.grad for p in m.parameters()), *m.buffers()])
            m.zero_grad()
        for a, b in zip(*results):
            assert torch.equal(a, b)


def test_custom_ops_pass_opcheck():
    """Schema, fake kernels and mutation annotations of the three ops, as torch.library checks
    them (running the kernels in the interpreter). Every row runs every step: rows past a
    sequence's end are left unwritten in cell and hw, which opcheck would compare."""
    model = make_model(hidden=8, max_length=3).float()
    w, stats = model.layer_weights(0), model.running_stats(0)
    T, B = 3, 4
    u = torch.randn(T, B, 32, device=DEVICE)
    h0, c0 = torch.randn(B, 8, device=DEVICE), torch.randn(B, 8, device=DEVICE)
    fwd_args = (u, w.weight_hh.detach(), w.gamma_hh.detach(), w.gamma_c.detach(),
                w.beta_c.detach(), h0, c0, *(t.clone() for t in stats[2:6]), [4, 4, 4],
                [0, 1, 2], [0.1, 0.1, -1.0], None, 1e-5)
    torch.library.opcheck(torch.ops.bnlstm_triton.forward_loop, fwd_args)
    cumulative = torch.tensor([1.0, 0.5, 0.0], device=DEVICE)  # weights read on the device
    torch.library.opcheck(torch.ops.bnlstm_triton.forward_loop,
                          (*fwd_args[:13], [1.0, 1.0, -1.0], cumulative, 1e-5))
    y, h_n, c_n, cell, hw, stat_hh, stat_c = torch.ops.bnlstm_triton.forward_loop(*fwd_args)
    dy, dh_n, dc_n = (torch.randn(*shape, device=DEVICE) for shape in ((T, B, 8), (B, 8), (B, 8)))
    bwd_args = (u, hw, cell, *fwd_args[1:5], stat_hh, stat_c, dy, dh_n, dc_n, [4, 4, 4],
                [True, True, False])
    torch.library.opcheck(torch.ops.bnlstm_triton.backward_loop, bwd_args)
    x = torch.randn(T, B, 3, device=DEVICE)
    for bias in (w.bias.detach(), None):
        torch.library.opcheck(torch.ops.bnlstm_triton.forward_loop_fused_input,
                              (x, w.weight_ih.detach(), bias, w.gamma_ih.detach(),
                               *(t.clone() for t in stats[:2]), *fwd_args[1:]))


def test_float_arguments_are_annotated_float64():
    """Triton's launcher types an unannotated float argument as float32 (the interpreter passes
    the double through, so no numeric test here sees it): float64 layers would move their
    running statistics by a factor rounded to float32."""
    from triton.runtime.jit import _normalize_ty  # how the launcher reads an annotation

    params = inspect.signature(triton_step._fwd_step_kernel.fn).parameters
    assert {name: _normalize_ty(params[name].annotation) for name in ("factor", "eps")} == {
        "factor": "fp64", "eps": "fp64"}


def test_final_states_are_row_major_whatever_the_initial_states_strides():
    """h_n and c_n start as copies of h0 and c0 and the kernel writes them row-major: a dense
    transposed h0 (or dc_n in the backward) must not scramble them."""
    model = make_model(hidden=8, max_length=3).float()
    w, stats = model.layer_weights(0), model.running_stats(0)
    u, dy = torch.randn(3, 4, 32, device=DEVICE), torch.randn(3, 4, 8, device=DEVICE)
    h0, c0, dh_n, dc_n = (torch.randn(4, 8, device=DEVICE) for _ in range(4))
    weights = [t.detach() for t in (w.weight_hh, w.gamma_hh, w.gamma_c, w.beta_c)]
    steps = ([4, 4, 3], [0, 1, 2], [0.1, 0.1, 0.1], None, 1e-5)

    def column_major(t):
        return t.t().contiguous().t()

    def forward(h0, c0):
        running = [t.clone() for t in stats[2:6]]
        return torch.ops.bnlstm_triton.forward_loop(u, *weights, h0, c0, *running, *steps)

    plain = forward(h0, c0)
    strided = forward(column_major(h0), column_major(c0))
    for name, a, b in zip(("y", "h_n", "c_n"), plain, strided):
        assert b.is_contiguous() and torch.equal(a, b), name
    _, _, _, cell, hw, stat_hh, stat_c = plain
    grads = [torch.ops.bnlstm_triton.backward_loop(
        u, hw, cell, *weights, stat_hh, stat_c, dy, dh_n, dc, steps[0], [True, True, True])
        for dc in (dc_n, column_major(dc_n))]
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@triton.jit
def _offsets_kernel(base_ptr, out_ptr, stride):
    ptrs = triton_step._tile_ptrs(base_ptr, stride, tl.arange(0, 4), tl.arange(0, 2))
    offs = ptrs.to(tl.int64) - base_ptr.to(tl.int64)  # [4, 2] bytes
    tl.store(out_ptr + tl.arange(0, 4)[:, None] * 2 + tl.arange(0, 2)[None, :], offs)


def test_row_offsets_are_64_bit():
    """Every row of a tile is addressed through _tile_ptrs: row x stride past 2^31 (B x 4H
    or 4H x H that large) must not wrap."""
    base = torch.zeros(1, device=DEVICE)
    out = torch.empty(4, 2, dtype=torch.int64, device=DEVICE)
    stride = 2**30
    _offsets_kernel[(1,)](base, out, stride)
    want = (torch.arange(4)[:, None] * stride + torch.arange(2)[None, :]) * base.element_size()
    assert torch.equal(out.cpu(), want)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_input_product(training, monkeypatch):
    """The variant whose step launches compute x_t W_ih^T themselves (input 40 spans three
    reduction blocks, 17 rows two chunks), float64 exact and float32 by the rule; the hoisted
    loop (which takes u, after the hoisted GEMM) is never called."""
    def no_hoisting(*args):
        raise AssertionError("the hoisted input product ran")
    monkeypatch.setattr(triton_step, "forward_loop", no_hoisting)
    lengths = [6, 2, 7, 7, 1, 4, 7, 3, 5, 6, 7, 2, 7, 4, 4, 1, 7]
    with triton_step.use_input_product("fused"):
        check_rule(make_model(input_size=40, hidden=24, bidirectional=True,
                              training=training), packed(_x(7, 17, 40), lengths))


def test_fused_input_product_half_precision():
    with triton_step.use_input_product("fused"):
        check_rule(make_model(hidden=24), _x(5, 5), dtypes=(torch.bfloat16,))


@pytest.mark.parametrize("cfg", [triton_step.NARROW_CONFIGS[0], triton_step.Config(16, 8, 16, 4)],
                         ids=["4", "8"])
def test_narrow_programs(cfg):
    """Programs of 4 (the GPU forward's NARROW_CONFIGS) or 8 hidden units (a tile sweep
    candidate; the backward keeps 16), over 10 units: the last program is part padding."""
    with triton_step.use_config(cfg):
        check_rule(make_model(hidden=10), packed(_x(6, 5), [6, 3, 6, 1, 4]))


def test_input_product_switch_is_checked(monkeypatch):
    with pytest.raises(ValueError, match="mode: expected one of"):
        triton_step.use_input_product("inside").__enter__()
    monkeypatch.setattr(triton_step.SETTINGS, "input_product", "Fused")
    model = make_model().float()
    model.backend = "triton"
    with pytest.raises(ValueError, match="BNLSTM_TRITON_INPUT_PRODUCT: expected one of"):
        model(torch.randn(3, 2, 3, device=DEVICE))


def test_auto_never_takes_the_interpreter_and_triton_needs_a_device_it_supports():
    for dtype in (None, torch.float32):  # without and with the first-use check
        assert bnlstm_cuda.backends.resolve("auto", torch.device("cpu"), dtype) is not triton_step
    with pytest.raises(ValueError, match="backend .triton. cannot run on meta"):
        bnlstm_cuda.backends.resolve("triton", torch.device("meta"))


def _count_launches(monkeypatch, kernel_name):
    """Count the launches of triton_step.<kernel_name> and their `steps` argument."""
    kernel = getattr(triton_step, kernel_name)
    launches = []

    class Counting:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((grid, kwargs["PERSISTENT"]))
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(triton_step, kernel_name, Counting())
    return launches


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_persistent_layer(training, monkeypatch):
    """Every step of a layer in one launch of one program, forward and backward: 17 rows in
    two 16-row chunks whose running rows shrink to one chunk and below it, 24 units in two
    blocks (the second part padding), T=7 past max_length=3; float64 exact, float32 by the
    rule. One launch per pass and dtype."""
    forward = _count_launches(monkeypatch, "_fwd_step_kernel")
    backward = _count_launches(monkeypatch, "_bwd_step_kernel")
    lengths = [7, 2, 7, 7, 1, 4, 7, 3, 5, 6, 7, 2, 7, 4, 4, 1, 7]
    with triton_step.use_persistent(True):
        check_rule(make_model(hidden=24, training=training, max_length=3),
                   packed(_x(7, 17), lengths))
    assert forward == backward == [((1,), True)] * 2


def test_forward_programs_fill_the_sms():
    """On a GPU the hoisted forward takes 4-unit programs unless 16-unit ones already fill 90%
    of the SMs; the backward and the fused-input forward keep 16 units."""
    cuda, plan = torch.device("cuda"), triton_step.plan
    wide, narrow = triton_step.CONFIGS[2], triton_step.NARROW_CONFIGS[2]
    assert plan(64, 512, cuda, sms=132) == triton_step.Plan(narrow, (128,), False)
    assert plan(64, 2048, cuda, sms=132) == triton_step.Plan(wide, (128,), False)
    assert plan(64, 2048, cuda, sms=150) == triton_step.Plan(narrow, (512,), False)
    assert plan(20, 512, cuda, sms=132).cfg == triton_step.NARROW_CONFIGS[1]
    assert plan(64, 512, cuda, backward=True, sms=132).cfg.block_h == 16
    assert plan(64, 512, cuda, fused_input=True, sms=132).cfg.block_h == 16
    assert plan(64, 512, torch.device("cpu")).cfg == triton_step.CONFIGS[0]


def test_persistent_layer_cumulative_momentum_and_the_gpu_plan():
    """momentum=None: the persistent launch reads every step's weight from the device. On a GPU
    a layer takes it up to PERSISTENT_MAX_H units, the fused-input forward never."""
    cuda = torch.device("cuda")
    assert triton_step.plan(64, 128, cuda) == triton_step.Plan(triton_step.PERSISTENT_CONFIG, (1,),
                                                               True)
    assert not triton_step.plan(5, 129, cuda).persistent
    assert not triton_step.plan(5, 8, cuda, fused_input=True).persistent
    with triton_step.use_persistent(True):
        check_rule(make_model(hidden=8, bias=False, momentum=None), packed(_x(5, 5),
                                                                           [5, 2, 5, 4, 1]))
