"""The CUDA-graph replay policy of backends/step_graphs.py, on the CPU: recording stand-ins for
the capture and for torch.cuda's device, stream and graph calls. (The replays themselves are
checked against eager launches on a GPU, in test_triton_gpu.py.)"""

from __future__ import annotations

import contextlib

import pytest
import torch

from bnlstm_cuda.backends import step_graphs
from bnlstm_cuda.backends.step_graphs import StepGraphs, graph_key

CUDA1 = torch.device("cuda", 1)


@pytest.fixture
def current_device(monkeypatch):
    """Graphs on, and torch.cuda.device recording the device it makes current: the list holds
    the current device while a guard is open."""
    current = []

    class Device:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            current.append(self.device)

        def __exit__(self, *exc):
            current.pop()

    monkeypatch.setattr(torch.cuda, "device", Device)
    monkeypatch.setattr(step_graphs, "graphs_enabled", lambda device: True)
    return current


def _recorder(events, current=None):
    """(launch, capture) that append what ran, and on which device, to events."""
    def where():
        return current[-1] if current else None

    def capture(launch):
        events.append(("capture", where()))
        return lambda: events.append(("replay", where()))

    return (lambda: events.append(("eager", where()))), capture


def test_capture_on_the_second_identical_loop(current_device):
    events = []
    launch, capture = _recorder(events)
    graphs = StepGraphs(capacity=2, capture=capture)

    def run(key):
        graphs.run(key, launch, CUDA1)

    run("a")
    run("a")
    run("a")
    assert [e for e, _ in events] == ["eager", "capture", "replay", "replay"]
    events.clear()
    run("b")
    run("c")  # evicts "a", the least recently used
    run("a")
    assert [e for e, _ in events] == ["eager", "eager", "eager"]
    events.clear()
    graphs.enabled = False  # as launches_from_python() does to GRAPHS
    run("a")
    graphs.enabled = True
    run("a")
    assert [e for e, _ in events] == ["eager", "capture", "replay"]


def test_launches_from_python_switches_the_shared_replay_off():
    with step_graphs.launches_from_python():
        assert not step_graphs.GRAPHS.enabled
    assert step_graphs.GRAPHS.enabled


def test_a_shape_change_is_a_new_entry(current_device):
    """One address seen with another shape (another B or H) is another loop: never a replay of
    the old grid and sizes."""
    events = []
    launch, capture = _recorder(events)
    graphs = StepGraphs(capture=capture)
    buffer = torch.zeros(8, 4)
    for view in (buffer, buffer, buffer.view(4, 8), buffer.view(4, 8)):
        assert view.data_ptr() == buffer.data_ptr()
        graphs.run(graph_key([view], "fwd"), launch, CUDA1)
    assert [e for e, _ in events] == ["eager", "capture", "replay", "eager", "capture", "replay"]


def test_launches_captures_and_replays_run_on_the_tensors_device(current_device):
    """Tensors on cuda:1 while another device is current: every launch, the capture and the
    replay happen with cuda:1 made current, with graphs on or off."""
    events = []
    launch, capture = _recorder(events, current_device)
    graphs = StepGraphs(capture=capture)
    for _ in range(2):
        graphs.run("key", launch, CUDA1)
    graphs.enabled = False
    graphs.run("key", launch, CUDA1)
    assert events == [("eager", CUDA1), ("capture", CUDA1), ("replay", CUDA1), ("eager", CUDA1)]
    assert current_device == []


def test_capture_is_thread_local_on_a_side_stream_and_flushes_nothing(monkeypatch):
    """capture_error_mode="thread_local" (other threads' CUDA calls stay legal), and neither the
    device synchronisation nor the cache flush of torch.cuda.graph."""
    calls = []

    class Graph:
        def capture_begin(self, **kwargs):
            calls.append(("begin", kwargs))

        def capture_end(self):
            calls.append(("end",))

        def replay(self):
            calls.append(("replay",))

    @contextlib.contextmanager
    def stream(s):
        calls.append(("stream", s))
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: "side")
    monkeypatch.setattr(torch.cuda, "stream", stream)
    for name in ("synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, name=name: calls.append((name,)))
    replay = step_graphs.capture_cuda_graph(lambda: calls.append(("launch",)))
    replay()
    assert calls == [("stream", "side"), ("begin", {"capture_error_mode": "thread_local"}),
                     ("launch",), ("end",), ("replay",)]


def test_graphs_only_on_cuda_and_can_be_switched_off(monkeypatch):
    assert not step_graphs.graphs_enabled(torch.device("cpu"))
    assert step_graphs.graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("BNLSTM_CUDA_GRAPHS", "0")
    assert not step_graphs.graphs_enabled(torch.device("cuda"))
