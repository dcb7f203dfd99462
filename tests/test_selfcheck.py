"""`python -m bnlstm_cuda.info` (bnlstm_cuda/selfcheck.py) on the CPU: it runs, and an injected
faulty backend is caught."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from bnlstm_cuda import backends, info
from bnlstm_cuda.backends import torch_ops


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
    """A registry of the faulty backend, then torch."""
    monkeypatch.setattr(backends, "_REGISTRY", {"faulty": _faulty_backend(), "torch": torch_ops})


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
