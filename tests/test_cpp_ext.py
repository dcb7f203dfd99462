"""The C++ extension (bnlstm_cuda._C, csrc/): registration, schemas, fake kernels, argument
checks, the CPU kernels' op-level checks and the setup.py decisions run on any machine where it
is built (CI: .venv with the CPU build of torch, and .venv-cuda with the CUDA build, no GPU);
the CUDA kernels themselves run with BNLSTM_TEST_DEVICE=cuda. The CPU kernels also run in every
test that takes the `backend` fixture.

GPU checks, through the autograd Function (the backend contract): float64 kernels against the
torch backend in float64 to 1e-10 (the math), and fp32/bf16/fp16 within the rule of
test_triton.py (error against the float64 oracle at most RULE_K times that of the torch backend
run in the same dtype); then the module against the reference, torch.compile(fullgraph=True)
and the full torch.library.opcheck.
"""

from __future__ import annotations

import copy
import os
import runpy
import subprocess
import sys
import types

import pytest
import torch
from conftest import DEVICE, assert_rel_close, compare_with_reference
from gpu_contract import CASES, DTYPES, check_against_torch_ops
from torch._subclasses.fake_tensor import FakeTensorMode

from bnlstm_cuda import BNLSTM, backends, input_norm
from bnlstm_cuda.backends import cpp, fused, torch_ops, triton_step
from bnlstm_cuda.function import run_layer
from bnlstm_cuda.layer_state import accumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
built, why_not_built = cpp.available()
needs_ext = pytest.mark.skipif(not built, reason=why_not_built)
needs_gpu = pytest.mark.skipif(DEVICE.type != "cuda" or not cpp.cuda_kernels(),
                               reason="needs BNLSTM_TEST_DEVICE=cuda and the CUDA kernels built")


def op_args(device, dtype=torch.float32, T=5, B=3, H=8, L=4):
    """Valid forward_loop arguments: batch_sizes [3, 3, 2, 2, 1], rows clamped to L-1, the last
    step (one sequence) normalised with its running row; u in the accumulator dtype."""
    G = 4 * H

    def r(*shape, dtype=dtype):
        return torch.randn(*shape, device=device, dtype=dtype)

    acc = torch.float64 if dtype == torch.float64 else torch.float32  # the running statistics'
    running = [r(L, G, dtype=acc), r(L, G, dtype=acc).abs(), r(L, H, dtype=acc),
               r(L, H, dtype=acc).abs()]
    return (r(T, B, G, dtype=acc), r(G, H), r(G), r(H), r(H), r(B, H), r(B, H), *running,
            [3, 3, 2, 2, 1][:T], [min(t, L - 1) for t in range(T)],
            [0.1, 0.1, 0.1, 0.1, -1.0][:T], None, 1e-5)


def backward_args(fwd_args, outputs):
    """backward_loop arguments matching a forward_loop call and its outputs."""
    u, weight_hh, gamma_hh, gamma_c, beta_c = fwd_args[:5]
    y, h_n, c_n, cell, hw, stat_hh, stat_c = outputs
    T, B = u.shape[:2]
    H = weight_hh.shape[1]
    dy = torch.randn(T, B, H, device=u.device, dtype=weight_hh.dtype)
    dh_n, dc_n = (torch.randn(B, H, device=u.device, dtype=u.dtype) for _ in range(2))
    use_batch = [f >= 0 for f in fwd_args[13]]
    return (u, hw, cell, weight_hh, gamma_hh, gamma_c, beta_c, stat_hh, stat_c, dy, dh_n, dc_n,
            fwd_args[11], use_batch)


def run_ops(ops, device, B, H, T, dtype):
    """The forward and backward ops of `ops` (torch.ops.bnlstm, or the emulation's) on fixed
    random inputs on `device` (packed, T > max_length, the last steps with one sequence; u in
    the accumulator dtype); every output, the updated running rows and every gradient."""
    g = torch.Generator().manual_seed(0)
    G, L = 4 * H, max(T - 2, 1)
    acc = accumulator(dtype)

    def r(*shape, dtype=dtype):
        return torch.randn(*shape, generator=g).to(device, dtype)

    lengths = sorted(torch.randint(1, T + 1, (B,), generator=g).tolist(), reverse=True)
    lengths[0] = T
    sizes = [sum(n > t for n in lengths) for t in range(T)]
    running = [r(L, G, dtype=acc), r(L, G, dtype=acc).abs(), r(L, H, dtype=acc),
               r(L, H, dtype=acc).abs()]
    args = (r(T, B, G, dtype=acc), 0.3 * r(G, H), r(G), r(H), r(H), r(B, H), r(B, H), *running,
            sizes, [min(t, L - 1) for t in range(T)], [0.1 if n >= 2 else -1.0 for n in sizes],
            None, 1e-5)
    out = ops.forward_loop(*args)
    _, _, _, cell, hw, stat_hh, stat_c = out
    dy, dh_n, dc_n = r(T, B, H), r(B, H, dtype=acc), r(B, H, dtype=acc)
    grads = ops.backward_loop(args[0], hw, cell, *args[1:5], stat_hh, stat_c, dy, dh_n, dc_n,
                              sizes, [n >= 2 for n in sizes])
    return [*out, *running, *grads]


def test_registry_lists_cpp_after_triton_and_says_why_it_cannot_run():
    assert list(backends._REGISTRY) == ["triton", "cpp", "torch"]
    ok, reason = backends.available_backends()["cpp"]
    if not built:
        assert not ok and "not built" in reason
    else:
        assert ok and "CPU" in reason
    assert cpp.supports(torch.device("cpu")) is None
    assert "CPU and CUDA tensors" in cpp.supports(torch.device("mps"))
    if cpp.cuda_kernels():
        assert cpp.supports(torch.device("cuda")) is None
    else:
        assert "built without its CUDA kernels" in cpp.supports(torch.device("cuda"))


def test_auto_picks_cpp_for_cpu_tensors_and_for_cuda_tensors_when_triton_cannot(monkeypatch):
    monkeypatch.setattr(cpp, "available", lambda: (True, "stub"))
    monkeypatch.setattr(cpp, "cuda_kernels", lambda: True)
    monkeypatch.setattr(triton_step, "available", lambda: (False, "stub"))
    assert backends.resolve("auto", torch.device("cuda")) is cpp
    assert backends.resolve("auto", torch.device("cpu")) is cpp
    monkeypatch.setattr(cpp, "available", lambda: (False, "stub"))
    assert backends.resolve("auto", torch.device("cpu")) is torch_ops


def test_cuda_tensors_without_cuda_kernels_get_a_clear_error(monkeypatch):
    monkeypatch.setattr(cpp, "available", lambda: (True, "CPU only"))
    monkeypatch.setattr(cpp, "cuda_kernels", lambda: False)
    with pytest.raises(ValueError, match="backend 'cpp' cannot run on cuda: .*without its CUDA"):
        backends.resolve("cpp", torch.device("cuda"))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_op_names_the_dtypes_it_computes(dtype):
    with pytest.raises(RuntimeError, match="CPU kernels compute float32 and float64"):
        torch.ops.bnlstm.forward_loop(*op_args("cpu", dtype))


@needs_ext
@pytest.mark.parametrize("position,value,message", [
    (0, torch.randn(5, 3, 32, dtype=torch.float64), "u has dtype Double, expected Float"),
    (1, torch.randn(32, 7), "weight_hh must have shape"),
    (5, torch.randn(2, 8), "h0 must have shape"),
    (11, [3, 3, 2, 3, 1], "batch_sizes must be non-increasing"),
    (12, [0, 1, 2, 3, 4], r"rows\[4\] = 4 is outside"),
    (13, [0.1, 0.1, 0.1, 0.1, 0.1], r"factors\[4\] asks for batch statistics of 1 row"),
    (14, torch.ones(5, dtype=torch.float64), "factor_values has dtype Double, expected Float"),
    (14, torch.ones(4), "factor_values must have shape"),
    (15, -1.0, "eps must be non-negative"),
], ids=["u dtype", "weight_hh", "h0", "batch_sizes", "rows", "factors", "factor_values dtype",
        "factor_values shape", "eps"])
def test_argument_checks_name_the_argument(position, value, message):
    args = list(op_args("cpu"))
    args[position] = value
    with pytest.raises(RuntimeError, match=message):
        torch.ops.bnlstm.forward_loop(*args)


@needs_ext
def test_schemas_mark_exactly_the_running_statistics_as_mutated():
    forward = torch.ops.bnlstm.forward_loop.default._schema
    backward = torch.ops.bnlstm.backward_loop.default._schema
    written = [a.name for a in forward.arguments if a.alias_info and a.alias_info.is_write]
    assert written == list(fused.MUTATED)
    assert not any(a.alias_info for a in backward.arguments)
    assert not any(r.alias_info for r in (*forward.returns, *backward.returns))


def _fake_forward(dtype, **kwargs):
    with FakeTensorMode():
        return torch.ops.bnlstm.forward_loop(*op_args("cuda", dtype, **kwargs))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_fake_kernels_give_shapes_and_dtypes_without_running(dtype):
    T, B, H = 5, 3, 8
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    with FakeTensorMode():
        args = op_args("cuda", dtype, T=T, B=B, H=H)
        out = torch.ops.bnlstm.forward_loop(*args)
        grads = torch.ops.bnlstm.backward_loop(*backward_args(args, out))
    want = [((T + 1, B, H), dtype), ((B, H), dtype), ((B, H), dtype), ((T + 1, B, H), acc),
            ((T, B, 4 * H), acc), ((T, 2, 4 * H), acc), ((T, 2, H), acc)]
    assert [(tuple(t.shape), t.dtype) for t in out] == want
    assert all(t.device.type == "cuda" for t in out)
    # dgamma_ih and dbias are empty: given u, the loop leaves the input norm to the caller
    want = [(T, B, 4 * H), (T, B, 4 * H), (B, H), (B, H), (4 * H,), (H,), (H,), (0,), (0,)]
    assert [tuple(t.shape) for t in grads] == want
    assert all(t.dtype == acc for t in grads)


@needs_ext
def test_opcheck_on_meta_tensors():
    """On meta tensors the fake kernel serves as the meta kernel, so the schema,
    autograd-registration, fake-tensor and AOT-dispatch checks run against it."""
    args = op_args("meta")
    torch.library.opcheck(torch.ops.bnlstm.forward_loop.default, args)
    fwd_out = torch.ops.bnlstm.forward_loop(*op_args("meta"))
    torch.library.opcheck(torch.ops.bnlstm.backward_loop.default, backward_args(args, fwd_out))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_opcheck_on_cpu(dtype):
    """The full opcheck against the CPU kernels: schema, fake kernel against the real outputs,
    aliasing of the mutated running statistics."""
    args = op_args("cpu", dtype, T=5, B=3, H=40)
    torch.library.opcheck(torch.ops.bnlstm.forward_loop.default, args)
    out = torch.ops.bnlstm.forward_loop(*op_args("cpu", dtype, T=5, B=3, H=40))
    torch.library.opcheck(torch.ops.bnlstm.backward_loop.default, backward_args(args, out))


def input_norm_args(fwd_args, bias=True):
    """For op_args' forward: x W_ih^T (in u's place) and the keyword arguments that make the
    CPU loops normalise it in their steps (input_stat, gamma_ih, bias), and the u those stand
    for (input_norm.contribution, as the other loops get it)."""
    u, weight_hh = fwd_args[0], fwd_args[1]
    T, _, G = u.shape
    g = torch.Generator().manual_seed(1)
    xw = 2.0 + torch.randn(u.shape, generator=g, dtype=u.dtype)  # a mean well away from 0
    stat = torch.stack([torch.randn(T, G, generator=g, dtype=u.dtype),
                        0.5 + torch.rand(T, G, generator=g, dtype=u.dtype)], dim=1)
    weights = types.SimpleNamespace(
        gamma_ih=torch.randn(G, generator=g, dtype=weight_hh.dtype),
        bias=torch.randn(G, generator=g, dtype=weight_hh.dtype) if bias else None)
    kwargs = dict(input_stat=stat, gamma_ih=weights.gamma_ih, bias=weights.bias)
    return xw, kwargs, input_norm.contribution(input_norm.InputSaved(xw, stat), weights)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_input_norm_ops_pass_opcheck(dtype):
    """The CPU statistics pass, and both loops normalising x W_ih^T in their steps: schema,
    fake kernels against the real outputs."""
    torch.manual_seed(0)
    xw = torch.randn(4, 3, 8, dtype=dtype)
    torch.library.opcheck(torch.ops.bnlstm.input_statistics.default, (xw, [3, 3, 2, 2]))
    args = op_args("cpu", dtype, T=5, B=3, H=40)
    xw, kwargs, _ = input_norm_args(args)
    args = (xw, *args[1:])
    torch.library.opcheck(torch.ops.bnlstm.forward_loop.default, args, kwargs)
    out = torch.ops.bnlstm.forward_loop(*args, **kwargs)
    torch.library.opcheck(torch.ops.bnlstm.backward_loop.default, backward_args(args, out),
                          kwargs)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("H", [40, 100])
def test_cpu_loops_normalising_the_input_are_the_loops_given_u(dtype, bias, H):
    """The CPU loops reading x W_ih^T with its statistics give what they give from u (computed
    by input_norm's torch ops), and their in-step backward of the input norm what
    input_norm.backward makes of their dpre: packed rows shrinking to one, the last step with
    its running row (no batch-mean terms), T past max_length; one block (H = 40) and two of
    unequal widths (H = 100: 56 and 44)."""
    args = op_args("cpu", dtype, T=5, B=3, H=H, L=3)
    xw, kwargs, u = input_norm_args(args, bias)
    runs = []
    for first, extra in ((u, {}), (xw, kwargs)):
        copy_ = [first, *(t.clone() if isinstance(t, torch.Tensor) else t for t in args[1:])]
        out = torch.ops.bnlstm.forward_loop(*copy_, **extra)
        runs.append((out, copy_[7:11]))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip([*runs[0][0], *runs[0][1]], [*runs[1][0], *runs[1][1]]):
        torch.testing.assert_close(b, a, **tol)
    grad_args = [u, *backward_args(args, runs[0][0])[1:]]
    want = torch.ops.bnlstm.backward_loop(*grad_args)
    grad_args[0] = xw
    got = torch.ops.bnlstm.backward_loop(*grad_args, **kwargs)
    sizes, use_batch = grad_args[12], grad_args[13]
    steps = types.SimpleNamespace(batch_sizes=sizes, batch_stats=use_batch)
    dxw, dgamma_ih, dbias = input_norm.backward(
        want[0], input_norm.InputSaved(xw, kwargs["input_stat"]),
        types.SimpleNamespace(gamma_ih=kwargs["gamma_ih"]), steps)
    names = ["dxw", "dpre_hh", "dh0", "dc0", "dgamma_hh", "dgamma_c", "dbeta_c", "dgamma_ih",
             "dbias"]
    for name, a, b in zip(names, (dxw, *want[1:7], dgamma_ih, dbias), got, strict=True):
        torch.testing.assert_close(b, a, **tol, msg=lambda m, name=name: f"{name}: {m}")
    assert want[7].numel() == want[8].numel() == 0  # given u, the loop leaves them to the caller


@needs_ext
def test_cpu_loops_name_the_input_norm_arguments():
    args = op_args("cpu")
    xw, kwargs, _ = input_norm_args(args)
    with pytest.raises(RuntimeError, match="gamma_ih and bias come with input_stat"):
        torch.ops.bnlstm.forward_loop(xw, *args[1:], gamma_ih=kwargs["gamma_ih"])
    with pytest.raises(RuntimeError, match="input_stat needs gamma_ih"):
        torch.ops.bnlstm.forward_loop(xw, *args[1:], input_stat=kwargs["input_stat"])
    with pytest.raises(RuntimeError, match=r"input_stat must have shape \[5, 2, 32\]"):
        torch.ops.bnlstm.forward_loop(xw, *args[1:], **{**kwargs,
                                                       "input_stat": kwargs["input_stat"][:4]})
    with pytest.raises(RuntimeError, match=r"bias must have shape \[32\]"):
        torch.ops.bnlstm.forward_loop(xw, *args[1:], **{**kwargs, "bias": torch.zeros(8)})
    out = torch.ops.bnlstm.forward_loop(xw, *args[1:], **kwargs)
    with pytest.raises(RuntimeError, match="gamma_ih has dtype Double, expected Float"):
        torch.ops.bnlstm.backward_loop(*backward_args((xw, *args[1:]), out),
                                       **{**kwargs, "gamma_ih": kwargs["gamma_ih"].double()})


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_forward_without_save_changes_nothing_but_hw(dtype):
    """save=False (inference) leaves hw unwritten; every other output and running row is
    bitwise what a saving forward gives."""
    args = op_args("cpu", dtype, T=5, B=3, H=40)
    runs = []
    for save in (True, False):
        copy_ = [t.clone() if isinstance(t, torch.Tensor) else t for t in args]
        out = torch.ops.bnlstm.forward_loop(*copy_, save=save)
        runs.append([o for i, o in enumerate(out) if i != 4] + copy_[7:11])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@needs_ext
def test_function_runs_forward_and_backward_on_meta_tensors():
    """The whole layer (hoisted GEMMs, both loops, the handwritten backward) with the cpp
    backend on meta tensors, where the fake kernels serve: every output and gradient shape.
    (Fake CUDA tensors work for the forward, but the autograd engine wants a CUDA device.)"""
    T, B, H, input_size = 6, 4, 8, 3
    model = BNLSTM(input_size, H, max_length=4, device="meta").eval()
    weights, stats = model.layer_weights(0), model.running_stats(0)
    x = torch.randn(T, B, input_size, device="meta", requires_grad=True)
    h0 = torch.zeros(B, H, device="meta", requires_grad=True)
    c0 = torch.zeros(B, H, device="meta")
    y, h_n, c_n = run_layer(x, h0, c0, weights, stats, [4, 4, 3, 2, 2, 1], False, 0.1, 1e-5,
                            cpp)
    (y.sum() + h_n.sum() + c_n.sum()).backward()
    assert y.shape == (T, B, H) and h_n.shape == c_n.shape == (B, H)
    assert x.grad.shape == x.shape and h0.grad.shape == h0.shape
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


@needs_ext
def test_compile_fullgraph_traces_the_ops_on_meta_tensors():
    """torch.compile(fullgraph=True) through the layer with the cpp backend, forwards and
    backwards, on meta tensors (aot_eager: no GPU needed); evaluation mode, where the step
    plan needs no running count."""
    T, B, H = 5, 3, 8
    model = BNLSTM(H, H, max_length=4, device="meta").eval()
    weights, stats = model.layer_weights(0), model.running_stats(0)
    x = torch.randn(T, B, H, device="meta", requires_grad=True)
    h0, c0 = torch.zeros(B, H, device="meta"), torch.zeros(B, H, device="meta")

    def layer(x):
        y, h, c = run_layer(x, h0, c0, weights, stats, [3, 3, 2, 2, 1], False, 0.1, 1e-5,
                            cpp)
        return y.sum() + h.sum() + c.sum()

    torch._dynamo.reset()
    torch.compile(layer, fullgraph=True, backend="aot_eager")(x).backward()
    assert x.grad.shape == x.shape


def _load_setup():
    return runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="bnlstm_setup")


def test_setup_skips_the_extension_when_asked(monkeypatch, capsys):
    monkeypatch.setenv("BNLSTM_SKIP_BUILD", "1")
    assert _load_setup()["extension_build"]() == ([], {})
    assert "BNLSTM_SKIP_BUILD is set" in capsys.readouterr().err


def test_setup_without_a_compiler_installs_without_the_extension(monkeypatch, capsys):
    monkeypatch.delenv("BNLSTM_SKIP_BUILD", raising=False)
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert _load_setup()["extension_build"]() == ([], {})
    assert "no C++ compiler ('no-such-compiler'" in capsys.readouterr().err


def test_setup_builds_the_cpu_kernels_when_cuda_is_skipped(monkeypatch, capsys):
    monkeypatch.delenv("BNLSTM_SKIP_BUILD", raising=False)
    monkeypatch.setenv("BNLSTM_SKIP_CUDA_BUILD", "1")
    (ext,), cmdclass = _load_setup()["extension_build"]()
    assert "BNLSTM_SKIP_CUDA_BUILD is set" in capsys.readouterr().err
    assert ext.name == "bnlstm_cuda._C" and "build_ext" in cmdclass
    assert ext.sources == ["csrc/bnlstm.cpp", "csrc/loops_cpu.cpp", "csrc/input_norm_cpu.cpp"]
    assert ("BNLSTM_WITH_CUDA", None) not in ext.define_macros


def test_setup_adds_the_cuda_kernels_only_with_a_cuda_torch_and_a_toolkit(monkeypatch, capsys):
    from torch.utils.cpp_extension import CUDA_HOME

    monkeypatch.delenv("BNLSTM_SKIP_BUILD", raising=False)
    monkeypatch.delenv("BNLSTM_SKIP_CUDA_BUILD", raising=False)
    monkeypatch.setenv("BNLSTM_CUDA_ARCHS", "9.0")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5")  # ours takes precedence
    (ext,), cmdclass = _load_setup()["extension_build"]()
    err = capsys.readouterr().err
    assert ext.name == "bnlstm_cuda._C" and "build_ext" in cmdclass
    assert all(os.path.exists(os.path.join(ROOT, s)) for s in ext.sources)
    if torch.version.cuda is None:
        assert "CPU kernels only: torch" in err and "is a CPU build" in err
    elif CUDA_HOME is None:
        assert "CPU kernels only: no CUDA toolkit" in err
    else:
        assert ("BNLSTM_WITH_CUDA", None) in ext.define_macros
        assert "-Xptxas=-v" in ext.extra_compile_args["nvcc"]
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0"


# GPU only (BNLSTM_TEST_DEVICE=cuda): the kernels themselves


@needs_gpu
@DTYPES
@CASES
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_kernels_against_torch_ops(dtype, B, H, T, packed, bias, training):
    check_against_torch_ops(cpp, dtype, B, H, T, packed, bias, training)


@needs_gpu
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_against_reference_float64(training):
    """Packed, unsorted, bidirectional, two layers, beyond max_length, cumulative momentum:
    the module on the cpp backend against the oracle, three SGD steps."""
    from conftest import packed

    model = BNLSTM(3, 24, num_layers=2, bidirectional=True, max_length=4, momentum=None,
                   backend="cpp", dtype=torch.float64, device=DEVICE).train(training)
    lengths = [3, 7, 1, 5, 6]

    def make_input():
        x = torch.randn(7, 5, 3, dtype=torch.float64, device=DEVICE)
        return packed(x, lengths)

    compare_with_reference(model, make_input)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=["fp64", "fp32", "bf16"])
@pytest.mark.parametrize("B,H,T", [(33, 40, 7), (70, 520, 5)], ids=["B33-H40-T7", "B70-H520-T5"])
def test_per_step_launches_give_the_persistent_bits(dtype, B, H, T):
    """The CUDA loops per step (use_persistent(False): the same kernels a launch a step, W_hh
    streamed) give the persistent path's bits, as on the emulated device (test_emulation)."""
    ops = torch.ops.bnlstm
    paths = [ops.forward_path(dtype, H), ops.backward_path(dtype, H)]
    persistent = run_ops(ops, DEVICE, B, H, T, dtype)
    with cpp.use_persistent(False):
        per_step = run_ops(ops, DEVICE, B, H, T, dtype)
    for i, (a, b) in enumerate(zip(persistent, per_step)):
        assert torch.equal(a, b), f"result {i} differs between {paths} and per-step"


@needs_gpu
def test_float32_follows_allow_tf32():
    """float32 on TF32 tensor cores: tf32x3 by default (the contract's float32 rule, above), one
    TF32 product with torch.backends.cuda.matmul.allow_tf32: within RULE_K of TF32's 2^-10, and
    moved off the tf32x3 results by more than float32 rounding (as test_emulation's)."""
    case = (torch.float32, 33, 40, 7, True, True, True)
    exact = check_against_torch_ops(cpp, *case)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        tf32 = check_against_torch_ops(cpp, *case, floor=2.0 ** -10)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    moved = [(got - want).norm().item() / want.norm().item() for got, want in zip(tf32, exact)]
    assert min(moved[:8]) > 100 * torch.finfo(torch.float32).eps, moved


@needs_gpu
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compile_fullgraph_matches_eager(backend, training):
    torch.manual_seed(0)
    model = BNLSTM(16, 32, num_layers=2, max_length=10, backend=backend,
                   device=DEVICE).train(training)
    x = torch.randn(10, 8, 16, device=DEVICE)
    compiled_model = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    results = []
    for m, run in ((model, model), (compiled_model, compiled)):
        y, (h, c) = run(x)
        (y.square().sum() + h.sum() + c.sum()).backward()
        results.append([y, h, c, *(p.grad for p in m.parameters()), *m.buffers()])
    for a, b in zip(*results):
        assert_rel_close(b, a, tol=1e-5)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck_on_gpu(dtype):
    args = op_args(DEVICE, dtype, T=5, B=3, H=40)
    torch.library.opcheck(torch.ops.bnlstm.forward_loop.default, args)
    out = torch.ops.bnlstm.forward_loop(*op_args(DEVICE, dtype, T=5, B=3, H=40))
    torch.library.opcheck(torch.ops.bnlstm.backward_loop.default, backward_args(args, out))


def test_launch_factors_pass_numbers_and_keep_device_weights_on_the_device():
    assert fused.launch_factors([0.1, None, 0.5], torch.float32) == ([0.1, -1.0, 0.5], None)
    weights = [torch.tensor(0.5, dtype=torch.float64), None, torch.tensor(0.25)]
    numbers, values = fused.launch_factors(weights, torch.float32)
    assert numbers == [1.0, -1.0, 1.0]
    assert values.dtype == torch.float32 and values[0] == 0.5 and values[2] == 0.25


@pytest.mark.parametrize("op", ["bnlstm_triton", "bnlstm"])
def test_final_states_come_from_each_rows_last_step(op):
    """Both fused forward ops write h_n / c_n of a row at its last running step; a row that
    never runs (batch_sizes[0] < B) keeps h0 / c0."""
    if op == "bnlstm" and not (built and cpp.supports(DEVICE) is None):
        pytest.skip(f"the C++ kernels cannot run on {DEVICE} here")
    if op == "bnlstm_triton" and not backends.available_backends()["triton"][0]:
        pytest.skip("the Triton backend cannot run here")
    args = list(op_args(DEVICE))
    args[11], args[13] = [2, 2, 1, 1, 1], [0.1, 0.1, -1.0, -1.0, -1.0]
    y, h_n, c_n, cell = getattr(torch.ops, op).forward_loop(*args)[:4]
    h0, c0 = args[5], args[6]
    for b, last in ((0, 5), (1, 2)):  # row b's last step, as a row of y and cell (row 0: h0, c0)
        assert torch.equal(h_n[b], y[last, b])
        assert torch.equal(c_n[b], cell[last, b].to(c_n.dtype))
    assert torch.equal(h_n[2], h0[2]) and torch.equal(c_n[2], c0[2])


@needs_ext
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cpu_kernels_with_a_partial_block_match_the_oracle(training):
    """H = 264 is five blocks, four of 56 units and one of 40 (loops_cpu.cpp's block_units),
    float64 against the oracle, packed unsorted lengths."""
    from conftest import compare_with_reference, packed

    torch.manual_seed(0)
    model = BNLSTM(3, 264, max_length=3, dtype=torch.float64, backend="cpp").train(training)
    lengths = [5, 2, 4, 1, 5, 3]
    compare_with_reference(
        model, lambda: packed(torch.randn(5, 6, 3, dtype=torch.float64), lengths), steps=2)


@needs_ext
@pytest.mark.parametrize("H", [72, 264])
def test_cpu_kernels_give_the_same_bits_on_one_and_two_threads(H):
    """Blocks of units depend on H alone and every sum runs in a fixed order, so the thread
    count changes nothing: H = 72 is two blocks (40, 32), H = 264 five (56 wide, the last
    40); B = 33 rows with unsorted lengths, enough work per step for the blocks to run on both
    threads."""
    from conftest import packed, run_and_backward
    from torch.nn.utils.rnn import PackedSequence

    torch.manual_seed(0)
    model = BNLSTM(5, H, num_layers=2, bidirectional=True, max_length=4, backend="cpp")
    lengths = torch.randint(1, 9, (33,)).tolist()
    lengths[3] = 9
    x = packed(torch.randn(9, 33, 5), lengths)
    x = PackedSequence(x.data.requires_grad_(), x.batch_sizes, x.sorted_indices,
                       x.unsorted_indices)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            m = copy.deepcopy(model)
            upstream = {}
            torch.manual_seed(1)
            out, h_n, c_n, grads = run_and_backward(m, lambda m, i, h: m(i, h), x, None, upstream)
            runs.append([out, h_n, c_n, *grads.values(), *m.buffers()])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@needs_ext
def test_cpu_kernels_leave_the_thread_count_alone():
    """ATen sizes a thread's OpenMP pool from MKL's count the first time the thread reaches
    at::parallel_for; reached with MKL held at one thread, a fresh process dropped to one thread
    for good: every op after the first BN-LSTM call, nn.LSTM's included, ran on one core."""
    script = ("import torch, bnlstm_cuda; before = torch.get_num_threads(); "
              "m = bnlstm_cuda.BNLSTM(8, 64, max_length=4, backend='cpp'); "
              "m(torch.randn(4, 32, 8))[0].sum().backward(); "
              "print(before, torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    before, after = map(int, run.stdout.split())
    if before < 2:
        pytest.skip("one thread by default here: nothing to lose")
    assert after == before
