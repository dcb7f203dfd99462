"""Replaying a fused backend's step loop as one CUDA graph, to take Python's per-launch cost off
long loops. Nothing here knows the kernels: a loop is a `launch()` callable and a key that says
when two loops are the very same launches."""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict

import torch


class StepGraphs:
    """A loop is captured the second time the very same launches come (the key: the tensors'
    addresses, dtypes and shapes, the per-step numbers and flags) and replayed from then on; a
    replay runs exactly the kernels, with exactly the arguments, that eager launching would. In
    a training loop the caching allocator hands out the same addresses every iteration, so
    steady state replays; when addresses never repeat nothing is captured. Off on the CPU
    (interpreter) and with BNLSTM_CUDA_GRAPHS=0. `capture(launch) -> replay` is injectable for
    tests.
    """

    def __init__(self, capacity: int = 32, capture=None):
        self.capacity = capacity
        self.capture = capture or capture_cuda_graph
        self.entries: OrderedDict = OrderedDict()  # key -> None (seen once) or replay callable
        self.enabled = True  # see launches_from_python()

    def run(self, key, launch, device: torch.device) -> None:
        """Launch, capture or replay the loop `key` with the tensors' `device` current."""
        with device_guard(device):
            if not (self.enabled and graphs_enabled(device)) or _capturing():
                launch()  # inside someone else's capture the launches are simply recorded there
                return
            if key not in self.entries:
                self.entries[key] = None
                if len(self.entries) > self.capacity:
                    self.entries.popitem(last=False)
                launch()
                return
            self.entries.move_to_end(key)
            if self.entries[key] is None:
                self.entries[key] = self.capture(launch)
            self.entries[key]()


def graph_key(tensors, *scalars) -> tuple:
    """Two loops are the same launches when every tensor has the same address, dtype and shape
    (an address reused with another B or H means another grid and other sizes) and the
    per-step numbers and flags (`scalars`) are equal."""
    return (tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in tensors), *scalars)


def device_guard(device: torch.device):
    """`device` made current, as CUDAGuard does on the C++ side: Triton launches, and a graph
    captures and replays, on the current device, not on the tensors'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def graphs_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("BNLSTM_CUDA_GRAPHS", "1") != "0"


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def capture_cuda_graph(launch):
    """Capture `launch()` on a side stream and return the graph's replay. Thread-local mode, so
    CUDA calls from other threads (a DataLoader's pin-memory thread, NCCL's watchdog) stay legal
    during the capture; and capture_begin directly rather than torch.cuda.graph, which
    synchronises the device and empties the caching allocator on every capture: the launches
    allocate nothing."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(torch.cuda.Stream()):  # a pooled stream; capture needs a side one
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            launch()
        finally:
            graph.capture_end()
    return graph.replay


GRAPHS = StepGraphs()


@contextlib.contextmanager
def launches_from_python():
    """Launch every step from Python, replaying nothing: what the replay saves, measured."""
    GRAPHS.enabled = False
    try:
        yield
    finally:
        GRAPHS.enabled = True
