"""scikit-learn's 8x8 digits as pixel sequences: the stand-in for MNIST, which cannot be
downloaded here. Needs scikit-learn (the `bench` extra)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 8, 8) in [0, 1], labels (N,)): the 1797 digits scikit-learn ships."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def as_sequences(images: torch.Tensor, size: int = 8,
                 permutation: torch.Tensor | None = None) -> torch.Tensor:
    """(size*size, N, 1) time-major pixel sequences, one pixel per step in raster order,
    bilinearly resized to size x size (28 gives MNIST's 784 steps), optionally permuted."""
    if size != images.shape[-1]:
        images = F.interpolate(images[:, None], size=(size, size), mode="bilinear",
                               align_corners=False)[:, 0]
    seq = images.reshape(images.shape[0], -1)
    if permutation is not None:
        seq = seq[:, permutation]
    return seq.t().unsqueeze(-1).contiguous()
