"""Per-step numbers built on the device while a CUDA graph is captured (device_numbers.from_runs)
must be exactly what a copy would give: the capture path runs on the CPU here."""

from __future__ import annotations

import pytest
import torch

from bnlstm_cuda.device_numbers import device_numbers, from_runs

CASES = [
    ([64] * 100, torch.int32),  # a full batch
    ([5, 5, 4, 2, 2, 2, 1, 0], torch.int64),  # a packed batch's sizes, then 0
    ([3, 4, 5, 6, 7, 7, 7, 7], torch.int32),  # rows from start_step 3, clamped at row 7
    ([0, 1, 2, 3, 4], torch.int32),  # one rising run
    ([9, 1, 8, 2, 2, 7], torch.int64),  # no structure at all
    ([True, True, False, False], torch.int32),  # flags
    ([0.1, 0.1, 0.1, -1.0, -1.0], torch.float32),  # update weights, then running rows
    ([0.5, 1 / 3, 0.25, 0.2], torch.float64),  # a cumulative average's weights: no steps in floats
    ([1, 2, 3], torch.float32),  # integers in a float dtype stay exact: filled one by one
    ([7], torch.int32),
    ([], torch.float32),
]


@pytest.mark.parametrize("values,dtype", CASES)
def test_runs_give_exactly_the_copied_values(values, dtype):
    want = torch.tensor(values, dtype=dtype)
    got = from_runs(values, dtype, torch.device("cpu"))
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.equal(got, want)


def test_device_numbers_on_the_cpu_is_the_plain_tensor():
    got = device_numbers([3, 2, 2], torch.int32, torch.device("cpu"))
    assert torch.equal(got, torch.tensor([3, 2, 2], dtype=torch.int32))
