"""torch.compile of a model containing BNLSTM matches eager: outputs, every gradient and every
running buffer, over training steps and in eval, as one graph (fullgraph=True).

aot_eager runs Dynamo and AOTAutograd (functionalised buffer updates, the joint graph) without
code generation; inductor, whose C++ build costs about half a minute on 2 cores with a cold
cache, compiles one forward in training mode: the buffer updates are its risky part."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_rel_close

from bnlstm_cuda import BNLSTM

D = torch.float64


class Tagger(torch.nn.Module):
    def __init__(self, backend, momentum):
        super().__init__()
        self.rnn = BNLSTM(3, 6, bidirectional=True, max_length=2, momentum=momentum,
                          backend=backend, dtype=D)
        self.head = torch.nn.Linear(12, 2, dtype=D)

    def forward(self, x):
        out, (h_n, c_n) = self.rnn(x)
        return self.head(out), c_n


@pytest.mark.parametrize("compiler,momentum,modes,backward", [
    pytest.param("aot_eager", None, ("train", "train", "eval"), True, id="aot_eager"),
    pytest.param("inductor", 0.1, ("train", "train"), False, id="inductor-forward",
                 marks=pytest.mark.heavy),
])
def test_compiled_matches_eager(backend, compiler, momentum, modes, backward):
    torch._dynamo.reset()
    eager = Tagger(backend, momentum)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend=compiler, fullgraph=True)
    for mode in modes:
        eager.train(mode == "train"), compiled_model.train(mode == "train")
        x = torch.randn(3, 4, 3, dtype=D)
        results = []
        for m, run in ((eager, eager), (compiled_model, compiled)):
            with torch.set_grad_enabled(backward):
                y, c_n = run(x)
            if backward:
                (y.square().sum() + c_n.sum()).backward()
            results.append((y, c_n, {n: p.grad for n, p in m.named_parameters()}))
            m.zero_grad()
        (y, c_n, grads), (y2, c_n2, grads2) = results
        assert_rel_close(y2, y, name="output")
        assert_rel_close(c_n2, c_n, name="c_n")
        for name in grads if backward else ():
            assert_rel_close(grads2[name], grads[name], name="grad " + name)
        for (name, a), (_, b) in zip(compiled_model.named_buffers(), eager.named_buffers()):
            assert_rel_close(a, b, name=name)


def test_compiled_continued_calls_match_eager(backend):
    """One step per call with start_step running past max_length (sampling), as one graph per
    call: the same outputs and running rows as eager."""
    torch._dynamo.reset()
    eager = BNLSTM(3, 6, max_length=3, backend=backend, dtype=D)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    hx = hx2 = None
    for step in range(5):
        x = torch.randn(1, 4, 3, dtype=D)
        y, hx = eager(x, hx, start_step=step)
        y2, hx2 = compiled(x, hx2, start_step=step)
        assert_rel_close(y2, y, name=f"output at step {step}")
    for (name, a), (_, b) in zip(compiled_model.named_buffers(), eager.named_buffers()):
        assert_rel_close(a, b, name=name)


def test_autocast_question_needs_no_untraceable_call(monkeypatch):
    """torch 2.11's dynamo cannot trace torch.amp.is_autocast_available (seen on the H200 run,
    fullgraph compile refused): the forward asks only is_autocast_enabled, for device types
    known at import."""
    from bnlstm_cuda import autocast

    def refuse(kind):
        raise AssertionError("is_autocast_available called at run time")
    monkeypatch.setattr(torch.amp, "is_autocast_available", refuse)
    assert autocast.autocast_dtype(torch.device("cpu")) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast.autocast_dtype(torch.device("cpu")) == torch.bfloat16
    assert autocast.autocast_dtype(torch.device("meta")) is None


def test_autocast_probe_leaves_out_device_types_this_torch_does_not_know(monkeypatch):
    """A device type an older torch does not know raises in is_autocast_available: left out,
    the import goes on."""
    from bnlstm_cuda import autocast
    known = torch.amp.is_autocast_available

    def older_torch(kind):
        if kind == "maia":
            raise RuntimeError("Expected one of cpu, cuda, ... device type at start of device "
                               "string: maia")
        return known(kind)
    monkeypatch.setattr(torch.amp, "is_autocast_available", older_torch)
    found = autocast._autocast_devices()
    assert "maia" not in found and {"cpu", "cuda"} <= found
