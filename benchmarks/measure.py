"""Timing, peak memory and the environment record every result row carries.

One timing loop serves both devices: CUDA events per call on a GPU (no host sync inside the
timed region), perf_counter on the CPU. Quantiles p20/p50/p80 as Liger-Kernel reports them.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch

QUANTILES = (0.2, 0.5, 0.8)


class Timing(NamedTuple):
    ms_p20: float
    ms_p50: float
    ms_p80: float
    reps: int


def _quantiles(samples_ms: list[float]) -> Timing:
    q = torch.tensor(samples_ms, dtype=torch.float64).quantile(torch.tensor(QUANTILES,
                                                                             dtype=torch.float64))
    return Timing(*q.tolist(), len(samples_ms))


def _clock(device: torch.device):
    """A (start, stop -> ms) pair for one call on `device`."""
    if device.type == "cuda":
        def start():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event

        def stop(begin):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            return begin, end
        return start, stop
    return time.perf_counter, lambda begin: (time.perf_counter() - begin) * 1e3


def time_calls(fn: Callable[[], object], device: torch.device, budget_ms: float = 400.0,
               min_reps: int = 5, max_reps: int = 200, warmup: int = 2) -> Timing:
    """Run fn `warmup` times, then as many times as fit in budget_ms (at least min_reps, at most
    max_reps), timing each call on its own; return the p20/p50/p80 of those calls in ms."""
    _warm_up(fn, device, warmup)
    return _quantiles(_sample(fn, device, budget_ms, min_reps, max_reps))


def time_interleaved(calls: list[tuple[Callable, Callable[[], object]]], device: torch.device,
                     budget_ms: float = 400.0, rounds: int = 5, min_reps: int = 5,
                     max_reps: int = 200, warmup: int = 2) -> list[Timing]:
    """Time calls against each other: each (context factory, fn) is warmed up, then `rounds`
    rounds give every fn in turn its share of budget_ms (calls in a row, inside its context);
    the p20/p50/p80 of each fn's samples. A machine whose speed drifts within a run (a shared
    VM's 2x within minutes) then moves every fn alike, and their ratios hold; one call after
    another keeps what steady state builds (caches, replayed graphs) as time_calls does."""
    for context, fn in calls:
        with context():
            _warm_up(fn, device, warmup)
    samples: list[list] = [[] for _ in calls]
    for _ in range(rounds):
        for (context, fn), taken in zip(calls, samples):
            with context():
                taken += _sample(fn, device, budget_ms / rounds, -(-min_reps // rounds),
                                 max(1, max_reps // rounds))
    return [_quantiles(taken) for taken in samples]


def _warm_up(fn, device, warmup: int) -> None:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()


def _sample(fn, device, budget_ms: float, min_reps: int, max_reps: int) -> list[float]:
    """Calls of fn, each timed on its own, until budget_ms is spent (at least min_reps, at most
    max_reps); their times in ms."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start, stop = _clock(device)
    samples, spent = [], 0.0
    while len(samples) < max_reps and (len(samples) < min_reps or spent < budget_ms):
        t0 = time.perf_counter()
        samples.append(_one_call(fn, start, stop))
        sync()
        spent += (time.perf_counter() - t0) * 1e3
    if device.type == "cuda":
        samples = [begin.elapsed_time(end) for begin, end in samples]
    return samples


def _one_call(fn, start, stop):
    begin = start()
    fn()
    return stop(begin)


def cuda_graph_replay(fn: Callable[[], object]) -> Callable[[], None]:
    """Capture fn (already warmed up on a side stream, as capture requires) in a CUDA graph and
    return its replay; raises if fn does something a graph cannot hold (a host sync, an
    allocation that depends on data)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak bytes allocated by torch during one call, inputs and weights included, in MB; None
    on the CPU, where torch keeps no allocator statistics to read honestly."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty.strip() else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, str]:
    """What a result depends on besides the shape: card or CPU, versions, TF32, threads."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    cuda = device.type == "cuda"
    return {
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_model(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": str(torch.version.cuda) if cuda else "n/a",
        "cudnn": str(torch.backends.cudnn.version()) if cuda else "n/a",
        "tf32": str(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)
        if cuda else "n/a",
        "threads": str(torch.get_num_threads()),
    }
