"""The CUDA C++ kernels (csrc/persistent_fwd.cuh, csrc/persistent_bwd.cuh) run on the CPU: the
same source, compiled by the host compiler under csrc/emulation/cuda_emu.h (every CUDA thread an
OS thread, __syncthreads a barrier of the block with a watchdog, the WMMA calls of the products
collective over the warp's 32 threads; ordinary launches block by block, a
cooperative launch every block at once on an emulated device of 4 SMs), behind the CUDA time
loops (loops_cuda.cpp) and the ops (bnlstm.cpp) registered as torch.ops.bnlstm_emu.* on CPU
tensors.

They run the contract the GPU runs (gpu_contract.py and test_cpp_ext.py's module cases) at sizes
that reach every path of the kernels: B in {2, 5, 33, 70} (one to five row chunks of 16), H in
{8, 24, 40, 72} (one to three blocks, partial ones, one to three staging rounds), T in {1, 7},
packed unsorted lengths, train and eval, T > max_length, momentum=None with steps where one sequence
runs; the forward and the backward both persistent (one cooperative launch each: 1 to 3 blocks
and a grid barrier per step) and per step (the same kernels a launch a step, W_hh streamed: the
fallback, here on an emulated device without cooperative launch), bitwise alike; float32 in
tf32x3 and, with allow_tf32, in TF32. Then:
every launch in ascending, descending and a random block order, bitwise equal; a standalone
driver built with ThreadSanitizer runs the forward and backward per step and persistent, where a
race fails; the barrier watchdog names the kernel, for a block barrier and for
a grid barrier; WMMA calls a lane of the warp misses or makes with other arguments are reported;
the emulated device refuses a cooperative grid larger than it holds. Needs the CUDA
toolkit's headers ($CUDA_HOME/include) and ninja; `make emulate` runs this file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import types

import pytest
import test_cpp_ext
import torch
from conftest import DEVICE, compare_with_reference, packed
from gpu_contract import check_against_torch_ops
from torch.utils import cpp_extension

from bnlstm_cuda import BNLSTM, backends, info
from bnlstm_cuda.backends import cpp, fused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
EMULATION = os.path.join(CSRC, "emulation")
BUILD = os.path.join(ROOT, "build", "emulation")
CUDA_INCLUDE = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")
CCCL_INCLUDE = os.path.join(CUDA_INCLUDE, "cccl")  # libcu++ (cuda/atomic) for the host compiler
CFLAGS = ["-O2", "-Wno-unknown-pragmas"]


def _why_not() -> str | None:
    if DEVICE.type != "cpu":
        return f"the emulation runs on CPU tensors, BNLSTM_TEST_DEVICE is {DEVICE.type}"
    if not os.path.exists(os.path.join(CUDA_INCLUDE, "cuda_fp16.h")):
        return f"no CUDA toolkit headers at {CUDA_INCLUDE} (set CUDA_HOME)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


@pytest.fixture(scope="module")
def emu():
    """Builds the emulation (ninja: only what changed) and returns it as a backend module: the
    cpp backend's loops on the bnlstm_emu ops, every dtype the CUDA kernels compute."""
    os.makedirs(BUILD, exist_ok=True)
    cpp_extension.load(
        name="bnlstm_emu",
        sources=[os.path.join(CSRC, "bnlstm.cpp"), os.path.join(CSRC, "loops_cuda.cpp"),
                 os.path.join(EMULATION, "kernels.cpp"), os.path.join(EMULATION, "runtime.cpp")],
        extra_cflags=[*CFLAGS, "-DBNLSTM_CUDA_EMULATION", "-DBNLSTM_OPS=bnlstm_emu"],
        extra_include_paths=[CUDA_INCLUDE, CCCL_INCLUDE], build_directory=BUILD,
        is_python_module=False)
    for op, fake in (("forward_loop", fused.forward_loop_fake),
                     ("backward_loop", cpp.backward_loop_fake)):
        torch.library.register_fake(f"bnlstm_emu::{op}")(fake)
    ops = torch.ops.bnlstm_emu
    return types.SimpleNamespace(
        name="emulated CUDA kernels",
        dtypes=lambda device: cpp.dtypes(torch.device("cuda")),
        available=lambda: (True, "the CUDA kernels on CPU threads (csrc/emulation/)"),
        supports=lambda device: None if device.type == "cpu" else "CPU tensors only",
        forward_loop=functools.partial(cpp.forward_loop, ops=ops),
        backward_loop=functools.partial(cpp.backward_loop, ops=ops),
    )


# Contract cases (B, H, T, packed, bias): every B, H and T of the docstring, the multi-chunk and
# multi-block shapes together, packed and not.
CASES = [
    pytest.param(2, 72, 7, True, True, id="B2-H72-T7-packed"),
    pytest.param(5, 24, 7, True, True, id="B5-H24-T7-packed"),
    pytest.param(33, 40, 1, False, True, id="B33-H40-T1"),
    pytest.param(70, 8, 7, True, False, id="B70-H8-T7-packed-nobias"),
    pytest.param(70, 72, 7, True, True, id="B70-H72-T7-packed"),
]
TRAINING = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
PATHS = pytest.mark.parametrize("path", ["persistent", "per-step"])


def take_path(monkeypatch, path: str, dtype: torch.dtype, H: int) -> None:
    """Makes the CUDA forward and backward of a layer with H units take `path`: persistent on
    the emulated device as it is, per step on one without cooperative launch."""
    if path == "per-step":
        monkeypatch.setenv("BNLSTM_EMU_COOPERATIVE", "0")
    for taken in (torch.ops.bnlstm_emu.forward_path(dtype, H),
                  torch.ops.bnlstm_emu.backward_path(dtype, H)):
        assert taken.startswith(f"{path}: "), taken


@TRAINING
@PATHS
@pytest.mark.parametrize("B,H,T,packed_,bias", CASES)
def test_kernels_against_torch_ops_float64(emu, monkeypatch, B, H, T, packed_, bias, training,
                                           path):
    take_path(monkeypatch, path, torch.float64, H)
    check_against_torch_ops(emu, torch.float64, B, H, T, packed_, bias, training)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@PATHS
@pytest.mark.parametrize("B,H,T,packed_,bias", [
    CASES[1], pytest.param(33, 40, 7, True, True, id="B33-H40-T7-packed"), CASES[4]])
def test_kernels_against_torch_ops_low_precision(emu, monkeypatch, dtype, B, H, T, packed_, bias,
                                                 path):
    take_path(monkeypatch, path, dtype, H)
    check_against_torch_ops(emu, dtype, B, H, T, packed_, bias, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("B", [5, 33])
def test_persistent_backward_on_ffma_where_tensor_core_units_do_not_fit(emu, monkeypatch, dtype,
                                                                        B):
    """The persistent backward's product has U columns: on tensor cores U >= 16. Where that
    slice of W_hh is over a block's shared memory (here 20000 bytes, at H=24), the plan takes
    U=8 on FFMA (a 16-bit layer's rows staged in its own dtype), as float at H=1000 on an H100
    would; the contract holds there too."""
    monkeypatch.setenv("BNLSTM_EMU_SHARED_BYTES", "20000")
    assert torch.ops.bnlstm_emu.backward_path(dtype, 24).startswith(
        "persistent: 3 blocks of 8 units (128 threads, ")
    check_against_torch_ops(emu, dtype, B, 24, 7, True, True, True)


@PATHS
def test_float32_follows_allow_tf32(emu, monkeypatch, path):
    """float32 products run on TF32 tensor cores: as tf32x3 by default (about float32's
    accuracy: the contract above), in one TF32 pass where torch.backends.cuda.matmul.allow_tf32
    is on, as PyTorch's float32 matmuls then are. With it on, the kernels stay within RULE_K of
    TF32's precision (2^-10), and every output and gradient moves off the tf32x3 run by more
    than float32's rounding: the flag is read by both loops."""
    take_path(monkeypatch, path, torch.float32, 40)
    case = (torch.float32, 33, 40, 7, True, True, True)
    exact = check_against_torch_ops(emu, *case)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # (monkeypatch cannot restore this attribute)
    try:
        tf32 = check_against_torch_ops(emu, *case, floor=2.0 ** -10)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    moved = [(got - want).norm().item() / want.norm().item() for got, want in zip(tf32, exact)]
    eps = torch.finfo(torch.float32).eps
    # output, h_n, c_n and the gradients of x, h0, c0, W_ih, W_hh (forward and backward loops)
    assert min(moved[:8]) > 100 * eps, moved


@pytest.mark.parametrize("dtype,H,forward,backward", [
    (torch.float64, 24, "persistent: 3 blocks of 8 units (128 threads, ",
     "persistent: 3 blocks of 8 units (128 threads, "),
    (torch.float64, 40, "persistent: 3 blocks of 16 units (256 threads, ",
     "persistent: 3 blocks of 16 units (256 threads, "),
    (torch.float32, 72, "persistent: 3 blocks of 32 units (512 threads, ",
     "persistent: 3 blocks of 32 units (512 threads, "),
    (torch.float32, 160, "persistent: 20 blocks of 8 units (128 threads, ",
     "persistent: 10 blocks of 16 units (256 threads, "),
    (torch.float32, 176, "persistent: 11 blocks of 16 units (256 threads, ",
     "persistent: 11 blocks of 16 units (256 threads, "),
    (torch.float16, 24, "persistent: 3 blocks of 8 units (128 threads, ",
     "persistent: 2 blocks of 16 units (256 threads, "),
    (torch.bfloat16, 200, "persistent: 25 blocks of 8 units (128 threads, ",
     "persistent: 13 blocks of 16 units (256 threads, "),
    (torch.float32, 600, "per-step: the grid is larger than the blocks the SMs hold at once; "
     "150 blocks of 4 units (64 threads, ", "per-step: the grid is larger than the blocks the "
     "SMs hold at once; 38 blocks of 16 units (256 threads, "),
    (torch.float64, 1000, "per-step: W_hh's slice does not fit the shared memory of a block; "
     "250 blocks of 4 units (64 threads, ", "per-step: W_hh's slice does not fit the shared "
     "memory of a block; 125 blocks of 8 units (128 threads, "),
], ids=["fp64-H24", "fp64-H40", "fp32-H72", "fp32-H160", "fp32-H176", "fp16-H24", "bf16-H200",
        "fp32-H600", "fp64-H1000"])
def test_loop_paths(emu, dtype, H, forward, backward):
    """The smallest U (units per block) whose grid takes one block per SM; else the smallest
    whose grid the SMs hold at once (several per SM); else per step, saying why. The backward's
    product has U columns, so on tensor cores (float, 16-bit) it takes U >= 16 where the
    forward's 4U columns take U=8 (H=160, H=200); float64 (DFMA) takes U=8 both ways (H=24); at
    H=176 in float U=8's 22 blocks do not fit the SMs, U=16's 11 do. Per step: the narrowest
    blocks, on tensor cores where the dtype has them (forward U=4; backward U >= 8). info's
    report shows the same."""
    ops = torch.ops.bnlstm_emu
    assert ops.forward_path(dtype, H).startswith(forward)
    assert ops.backward_path(dtype, H).startswith(backward)
    lines = info.loop_paths(ops, [dtype], [H])
    assert lines == [f"{str(dtype)[6:]:9} H={H:<5} forward  {ops.forward_path(dtype, H)}",
                     f"{str(dtype)[6:]:9} H={H:<5} backward {ops.backward_path(dtype, H)}"]


def test_use_persistent_switches_both_loops_to_per_step(emu, monkeypatch):
    """Inside cpp.use_persistent(False) both loops run per step and say why; the results are
    bitwise those of the per-step path a device without cooperative launch takes; after the
    block the persistent path is back."""
    ops = torch.ops.bnlstm_emu
    with cpp.use_persistent(False, ops=ops):
        for path in (ops.forward_path(torch.float32, 40), ops.backward_path(torch.float32, 40)):
            assert path.startswith("per-step: the persistent kernels are turned off "
                                   "(bnlstm_cuda.backends.cpp.use_persistent); "), path
        switched = _run_ops(33, 40, 7, torch.float32)
    take_path(monkeypatch, "persistent", torch.float32, 40)
    monkeypatch.setenv("BNLSTM_EMU_COOPERATIVE", "0")
    for i, (a, b) in enumerate(zip(switched, _run_ops(33, 40, 7, torch.float32))):
        assert torch.equal(a, b), f"result {i} differs from the per-step path's"
    with pytest.raises(TypeError, match="use_persistent: on must be a bool, got int"):
        with cpp.use_persistent(1, ops=ops):
            pass


@TRAINING
def test_module_against_reference(emu, monkeypatch, training):
    """test_cpp_ext's module case (packed, unsorted, bidirectional, two layers, T > max_length,
    momentum=None, the last step with one running sequence) with the emulated kernels."""
    monkeypatch.setitem(backends._REGISTRY, "cpp", emu)
    take_path(monkeypatch, "persistent", torch.float64, 24)
    test_cpp_ext.test_module_against_reference_float64(training)


@pytest.mark.parametrize("B,H", [(33, 40), (70, 8)], ids=["B33-H40", "B70-H8"])
def test_momentum_none_with_single_sequence_steps(emu, monkeypatch, B, H):
    """Training with a cumulative average (momentum=None), T = 7 > max_length = 4, and one
    sequence longer than the rest: its last steps normalise with the running rows, which
    must stay unchanged there, while the others use batch statistics and move theirs."""
    monkeypatch.setitem(backends._REGISTRY, "cpp", emu)
    take_path(monkeypatch, "persistent", torch.float64, H)
    model = BNLSTM(3, H, max_length=4, momentum=None, backend="cpp", dtype=torch.float64)
    lengths = [5 - i % 3 for i in range(B)]
    lengths[B // 2] = 7

    def make_input():
        return packed(torch.randn(7, B, 3, dtype=torch.float64), lengths)

    compare_with_reference(model, make_input, steps=2)


def test_final_states_come_from_each_rows_last_step(emu):
    test_cpp_ext.test_final_states_come_from_each_rows_last_step("bnlstm_emu")


def test_opcheck(emu):
    """torch.library.opcheck on the emulated ops (its eager vs AOT comparison wants every output
    element defined run to run: the CUDA loop's memset of rows that stop running)."""
    args = test_cpp_ext.op_args("cpu")
    torch.library.opcheck(torch.ops.bnlstm_emu.forward_loop.default, args)
    out = torch.ops.bnlstm_emu.forward_loop(*test_cpp_ext.op_args("cpu"))
    torch.library.opcheck(torch.ops.bnlstm_emu.backward_loop.default,
                          test_cpp_ext.backward_args(args, out))


def test_emulated_loops_take_u_and_refuse_the_input_statistics(emu):
    """Only the CPU loops normalise x W_ih^T in their steps; the CUDA loops' ops say so."""
    args = test_cpp_ext.op_args("cpu")
    xw, kwargs, _ = test_cpp_ext.input_norm_args(args)
    with pytest.raises(RuntimeError, match="input_stat is for the CPU loops"):
        torch.ops.bnlstm_emu.forward_loop(xw, *args[1:], **kwargs)


def _run_ops(B, H, T, dtype):
    return test_cpp_ext.run_ops(torch.ops.bnlstm_emu, "cpu", B, H, T, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=["fp64", "fp32", "bf16"])
@pytest.mark.parametrize("B,H,T", [(33, 40, 7)], ids=["B33-H40-T7"])
def test_per_step_launches_give_the_persistent_bits(emu, monkeypatch, dtype, B, H, T):
    """Per step, the same kernels run one step a launch, W_hh streamed through shared memory
    with the rows and blocks narrower (forward U=4): where both run the product on the same
    units (here tensor cores, and FFMA in float64), each sum still runs over the same operands
    in the same order, so every result is bitwise the persistent path's."""
    take_path(monkeypatch, "persistent", dtype, H)
    persistent = _run_ops(B, H, T, dtype)
    take_path(monkeypatch, "per-step", dtype, H)
    per_step = _run_ops(B, H, T, dtype)
    for i, (a, b) in enumerate(zip(persistent, per_step)):
        assert torch.equal(a, b), f"result {i} differs between the persistent and per-step paths"


@pytest.mark.parametrize("B,H,T,path", [
    pytest.param(70, 72, 7, "persistent", id="B70-H72-T7-persistent"),
    *(pytest.param(B, 40, T, path, id=f"B{B}-H40-T{T}-{path}")
      for B, T in ((33, 7), (5, 1)) for path in ("persistent", "per-step"))])
def test_block_order_does_not_change_a_bit(emu, monkeypatch, B, H, T, path):
    """Every launch with its blocks started in ascending, descending and a random order: a
    block that read what another block of the same launch writes (per step), or read it before
    the grid barrier (persistent), would see a difference."""
    take_path(monkeypatch, path, torch.float32, H)
    results = []
    for order in ("ascending", "descending", "random:1"):
        monkeypatch.setenv("BNLSTM_EMU_BLOCK_ORDER", order)
        results.append(_run_ops(B, H, T, torch.float32))
    for result in results[1:]:
        for i, (a, b) in enumerate(zip(results[0], result)):
            assert torch.equal(a, b), f"result {i} differs between block orders"


@PATHS
@pytest.mark.parametrize("B,H,T", [(33, 40, 7), (5, 40, 1)], ids=["B33-H40-T7", "B5-H40-T1"])
def test_step_table_built_for_a_graph_capture_changes_no_bit(emu, monkeypatch, B, H, T, path):
    """Under CUDA graph capture the loops build their per-step tables on the device (fills and
    aranges) instead of copying them: the same kernels must see the same numbers."""
    take_path(monkeypatch, path, torch.float32, H)
    eager = _run_ops(B, H, T, torch.float32)
    monkeypatch.setenv("BNLSTM_EMU_CAPTURING", "1")
    captured = _run_ops(B, H, T, torch.float32)
    for i, (a, b) in enumerate(zip(eager, captured)):
        assert torch.equal(a, b), f"result {i} differs with the table built on the device"


def _driver() -> str:
    """The standalone driver over the emulated kernels, built with ThreadSanitizer (cached by
    the sources' content)."""
    sources = sorted(os.path.join(d, f) for d in (CSRC, EMULATION) for f in os.listdir(d)
                     if f.endswith((".h", ".cuh", ".cu", ".cpp"))
                     and f not in ("loops_cpu.cpp", "input_norm_cpu.cpp", "cpu_passes.h"))
    flags = ["-std=c++17", "-O1", "-g", "-fsanitize=thread", "-pthread", "-Wno-unknown-pragmas",
             "-I", CUDA_INCLUDE, "-I", CCCL_INCLUDE]
    digest = hashlib.sha256(" ".join(flags).encode())
    for path in sources:
        with open(path, "rb") as f:
            digest.update(f.read())
    exe = os.path.join(BUILD, f"check_driver_tsan_{digest.hexdigest()[:16]}")
    if not os.path.exists(exe):
        compiler = os.environ.get("CXX", "g++")
        units = [os.path.join(EMULATION, f) for f in ("check_driver.cpp", "runtime.cpp",
                                                      "kernels.cpp")]
        os.makedirs(BUILD, exist_ok=True)
        done = subprocess.run([compiler, *flags, *units, "-o", exe + ".tmp"],
                              capture_output=True, text=True)
        if done.returncode != 0 and "tsan" in done.stderr:
            pytest.skip(f"{compiler} cannot build with ThreadSanitizer: {done.stderr[-500:]}")
        assert done.returncode == 0, done.stderr
        os.replace(exe + ".tmp", exe)
    return exe


def _run_driver(*args, **env) -> subprocess.CompletedProcess:
    command = [_driver(), *map(str, args)]
    environ = {**os.environ, "TSAN_OPTIONS": "halt_on_error=1", **env}
    done = subprocess.run(command, capture_output=True, text=True, env=environ, timeout=300)
    if "unexpected memory mapping" in done.stderr and shutil.which("setarch"):
        # TSan's shadow layout and a kernel with more ASLR bits: run without randomisation
        command = ["setarch", os.uname().machine, "-R", *command]
        done = subprocess.run(command, capture_output=True, text=True, env=environ, timeout=300)
    return done


@pytest.mark.parametrize("dtype", ["float", "half"])
@pytest.mark.parametrize("B,H,sizes", [
    (70, 40, [70, 40, 1]),
    (40, 72, [40, 33]),
], ids=["B70-H40-T3", "B40-H72-T2"])
def test_no_data_race(B, H, sizes, dtype):
    """Forward and backward steps, then the persistent forward and backward (2 or 3 blocks at
    once, a grid barrier per step), under ThreadSanitizer, on shapes with more than one k tile
    and more than one row chunk (below that the next barrier hides a missing one), partial
    blocks, rows that stop, and
    a step with one running sequence; in half, the products go through the emulated WMMA calls,
    whose lanes read each other's fragments."""
    done = _run_driver("races" if dtype == "float" else "races-half", B, H, len(sizes), *sizes)
    assert "ThreadSanitizer" not in done.stderr, done.stderr[-6000:]
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("mode,message", [
    ("returned", "reached by 128 of 256 threads; the other 128 returned from the kernel"),
    ("divergent", "divergent __syncthreads: a thread at "),
    ("late", "reached by 255 of 256 threads within the watchdog's 0.5 s"),
])
def test_barrier_watchdog_names_the_kernel(mode, message):
    """A __syncthreads only part of the block reaches is an error naming the kernel, block and
    barrier, never a hang."""
    done = _run_driver("barrier", mode, BNLSTM_EMU_WATCHDOG_S="0.5")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "barrier_misuse_kernel, block 0: " in done.stderr and message in done.stderr, (
        done.stderr)
    assert "ThreadSanitizer" not in done.stderr, done.stderr


@pytest.mark.parametrize("mode,message", [
    ("returned", "warp-collective call at check_driver.cpp:"),
    ("divergent", "divergent warp-collective call: a thread at check_driver.cpp:"),
    ("skipped", "divergent warp: a lane at check_driver.cpp:"),
    ("argument", "lane 3 passes argument 1 of the warp-collective call at check_driver.cpp:"),
    ("ldm", "leading dimension 20 is not a multiple of 16 bytes"),
    ("unrounded", "a TF32 operand was not rounded to TF32 (__float_to_tf32)"),
])
def test_wmma_misuse_is_reported(mode, message):
    """A WMMA call one lane of the warp misses (returned, at another call, at a __syncthreads
    instead), makes with another pointer, with a leading dimension CUDA refuses, or a TF32
    product of floats not rounded to TF32 is an error naming the kernel and the call, never a
    hang or a silent result."""
    done = _run_driver("wmma", mode, BNLSTM_EMU_WATCHDOG_S="5")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "wmma_misuse_kernel, block 0: " in done.stderr and message in done.stderr, (
        done.stderr)
    if mode == "returned":
        assert "reached by 31 of 32 threads; the other 1 returned" in done.stderr, done.stderr
    assert "ThreadSanitizer" not in done.stderr, done.stderr


def test_grid_barrier_watchdog_names_the_kernel():
    """A grid barrier one block never reaches is an error naming the kernel and the spinning
    block, never a hang."""
    done = _run_driver("barrier", "grid", BNLSTM_EMU_WATCHDOG_S="0.5")
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("grid_barrier_misuse_kernel, block 0: a thread spun (__nanosleep) past the "
            "watchdog's 0.5 s") in done.stderr, done.stderr
    assert "ThreadSanitizer" not in done.stderr, done.stderr


@pytest.mark.parametrize("blocks,result", [(4, "ran"), (5, "refused")])
def test_cooperative_launch_size_limit(blocks, result):
    """An emulated device of 2 SMs holds 2 blocks with 100 kB of shared memory each at once: a
    larger cooperative grid is refused, as a GPU refuses it, and nothing runs."""
    done = _run_driver("cooperative", blocks, 100_000, BNLSTM_EMU_SMS="2")
    assert done.returncode == 0 and done.stdout.strip() == result, done.stdout + done.stderr


def test_emulated_ops_coexist_with_the_extension(emu):
    """bnlstm_emu's ops serve CPU tensors beside bnlstm_cuda._C's, with the same schemas."""
    emu_schema = torch.ops.bnlstm_emu.forward_loop.default._schema
    written = [a.name for a in emu_schema.arguments if a.alias_info and a.alias_info.is_write]
    assert written == list(fused.MUTATED)
    if cpp.available()[0]:
        assert str(torch.ops.bnlstm.forward_loop.default._schema).replace("bnlstm::", "") == (
            str(emu_schema).replace("bnlstm_emu::", ""))
