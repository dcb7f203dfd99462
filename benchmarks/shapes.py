"""The shapes the suite measures: points others publish (so numbers line up), the paper's tasks,
a full grid, and CPU-sized shapes for machines without a GPU."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch


class Shape(NamedTuple):
    """One measured point: T steps, B sequences, input and hidden width, dtype, and its origin."""

    T: int
    B: int
    input_size: int
    hidden_size: int
    dtype: torch.dtype
    label: str

    @property
    def tokens(self) -> int:
        return self.T * self.B

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return (f"{self.label}: T={self.T} B={self.B} input={self.input_size} "
                f"hidden={self.hidden_size} {dtype}")


FP32, BF16 = torch.float32, torch.bfloat16

GPU_DEFAULT = (
    Shape(100, 64, 512, 512, FP32, "fastrnns default"),
    Shape(100, 64, 512, 512, BF16, "fastrnns default"),  # the Triton issue's targets: both
    Shape(1024, 16, 768, 768, BF16, "FlashRNN default"),
    # The paper's tasks; PTB and text8 feed one-hot characters (50 and 27 symbols).
    Shape(784, 100, 1, 100, FP32, "paper sequential MNIST"),
    Shape(100, 64, 50, 1000, FP32, "paper Penn Treebank"),
    Shape(180, 128, 27, 2000, FP32, "paper text8"),
)

def _grid(steps, batches, widths, label) -> tuple[Shape, ...]:
    """Every (T, B, H) combination, input width = hidden width, float32."""
    return tuple(Shape(T, B, H, H, FP32, label)
                 for T, B, H in itertools.product(steps, batches, widths))


GPU_FULL = _grid((100, 300, 1000), (16, 32, 64, 128, 256), (256, 512, 1024), "grid")

CPU_DEFAULT = (
    Shape(8, 8, 32, 32, FP32, "tiny (compiled reference fits)"),
    Shape(64, 32, 1, 100, FP32, "pixel digits (examples/digits.py)"),
    Shape(100, 32, 128, 128, FP32, "small LSTM"),
    Shape(100, 64, 256, 256, FP32, "medium LSTM"),
)

CPU_FULL = _grid((50, 100), (16, 64), (64, 256), "cpu grid")

SUITES = {
    ("cuda", "default"): GPU_DEFAULT,
    ("cuda", "full"): GPU_FULL,
    ("cpu", "default"): CPU_DEFAULT,
    ("cpu", "full"): CPU_FULL,
}
