"""`python -m bnlstm_cuda.info` and the guarded "auto" (bnlstm_cuda/selfcheck.py,
backends/verify.py), on the CPU: the Triton interpreter passes, an injected faulty backend is
caught by both."""

from __future__ import annotations

import os
import subprocess
import sys
import types
import warnings

import pytest
import torch

from bnlstm_cuda import backends, info, selfcheck
from bnlstm_cuda.backends import torch_ops, triton_step, verify

CPU = torch.device("cpu")


def _faulty_backend():
    """The torch backend with h_n off by one part in a thousand: a kernel's typical slip."""
    def forward_loop(*args, **kwargs):
        y, h_n, c_n, saved = torch_ops.forward_loop(*args, **kwargs)
        return y, h_n * 1.001, c_n, saved

    return types.SimpleNamespace(
        name="faulty", dtypes=torch_ops.dtypes, available=lambda: (True, "injected"),
        supports=lambda device: None, forward_loop=forward_loop,
        backward_loop=torch_ops.backward_loop)


@pytest.fixture
def faulty(monkeypatch):
    """A registry of the faulty backend, then torch; no verdicts yet; the guard on."""
    monkeypatch.setattr(backends, "_REGISTRY", {"faulty": _faulty_backend(), "torch": torch_ops})
    monkeypatch.setattr(verify, "_VERDICTS", {})
    monkeypatch.delenv("BNLSTM_VERIFY", raising=False)


def test_info_runs_and_exits_0():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # seconds, not tens
    run = subprocess.run([sys.executable, "-m", "bnlstm_cuda.info"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "torch    cpu     float64   ok" in run.stdout
    assert "every runnable backend matches here" in run.stdout


def test_info_exits_1_on_a_faulty_backend(faulty, capsys):
    assert info.main() == 1
    out = capsys.readouterr().out
    assert "faulty   cpu     float32   WRONG   h_n" in out
    assert "torch    cpu     float32   ok" in out


def test_auto_refuses_a_faulty_backend_once_with_a_warning(faulty, monkeypatch):
    checks = []  # the check names its backends: it must not come back through "auto"
    check = selfcheck.check
    monkeypatch.setattr(selfcheck, "check", lambda *args: checks.append(args) or check(*args))
    with pytest.warns(RuntimeWarning, match=r"backend 'faulty' failed its first-use check on "
                      r"cpu in torch.float32: h_n is off by .* relative to the reference"):
        assert backends.resolve("auto", CPU, torch.float32) is torch_ops
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the verdict is kept: no second check, no second warning
        assert backends.resolve("auto", CPU, torch.float32) is torch_ops
    assert verify._VERDICTS == {("faulty", CPU, torch.float32): False}
    assert checks == [("faulty", CPU, torch.float32)]


def test_bnlstm_verify_0_skips_the_check(faulty, monkeypatch):
    monkeypatch.setenv("BNLSTM_VERIFY", "0")
    assert backends.resolve("auto", CPU, torch.float32).name == "faulty"
    assert verify._VERDICTS == {}


def test_no_check_while_torch_compile_traces(faulty, monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert backends.resolve("auto", CPU, torch.float32).name == "faulty"
    assert verify._VERDICTS == {}


@pytest.mark.skipif(not triton_step.available()[0] or triton_step.supports(CPU) is not None,
                    reason="needs the Triton interpreter (TRITON_INTERPRET=1)")
def test_the_triton_interpreter_passes_the_guard(monkeypatch):
    monkeypatch.setattr(verify, "_VERDICTS", {})
    monkeypatch.delenv("BNLSTM_VERIFY", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify.trusted(triton_step, CPU, torch.float32)
        assert verify.trusted(triton_step, CPU, torch.float64)
