"""The sequence layout helpers against their definitions."""

from __future__ import annotations

import random

import torch

from bnlstm_cuda.layout import batch_sizes_of, reverse_padded


def test_batch_sizes_count_the_sequences_still_running():
    rng = random.Random(0)
    for _ in range(200):
        T, B = rng.randint(1, 30), rng.randint(1, 20)
        lengths = sorted((rng.randint(1, T) for _ in range(B)), reverse=True)
        assert batch_sizes_of(lengths, T, B) == [sum(n > t for n in lengths) for t in range(T)]
    assert batch_sizes_of(None, 4, 3) == [3, 3, 3, 3]


def test_reverse_padded_reverses_within_each_length_and_is_its_own_inverse():
    lengths = [5, 3, 1]
    x = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3, 1)
    r = reverse_padded(x, lengths)
    for b, n in enumerate(lengths):
        assert torch.equal(r[:n, b], x[:n, b].flip(0))
        assert torch.equal(r[n:, b], x[n:, b])
    assert torch.equal(reverse_padded(r, lengths), x)
