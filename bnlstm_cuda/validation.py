"""Argument checks shared by the module and the functional op. Each raises TypeError or ValueError
naming the argument, what was expected and what came, so no kernel ever sees unchecked input."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional, Sequence

import torch
from torch import Tensor

from .autocast import as_autocast


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def check_start_step(value, reverse: bool, name: str = "start_step") -> int:
    """The sequence step a call starts at: an int in [0, 2**63) (int64, as the step counts are
    kept). A reverse direction reads each sequence from its end, so its steps of a call that
    continues a sequence are not the steps of the whole sequence: it takes only 0."""
    value = check_int(name, value, 0)
    if value >= 2**63:
        raise ValueError(f"{name}: expected an int below 2**63, got {value}")
    if reverse and value:
        raise ValueError(f"{name}: a reverse direction reads each sequence from its last "
                         f"element, so a call cannot continue a sequence there; expected 0 "
                         f"with a bidirectional model or reverse=True, got {value}")
    return value


def check_real(name: str, value, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite number in [low, high]: an infinite eps or gamma would silently zero every
    normalised value."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not (low <= value <= high and math.isfinite(value)):
        raise ValueError(f"{name}: expected a finite number in [{low}, {high}], got {value}")
    return float(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def check_backend_name(backend, names: Sequence[str]) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a str, one of {list(names)}, "
                        f"got {type(backend).__name__}")
    if backend not in names:
        raise ValueError(f"backend: expected one of {list(names)}, got {backend!r}")
    return backend


def check_momentum(momentum) -> Optional[float]:
    return None if momentum is None else check_real("momentum", momentum, 0.0, 1.0)


def check_tensor(name: str, t, like: Tensor, shape: Sequence[int]) -> None:
    """t must be a tensor of `shape` with like's dtype and device."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    check_dtype_device(name, t, like)


def check_dtype_device(name: str, t: Tensor, like: Tensor) -> None:
    """Same dtype (as autocast sees it: under autocast float32 input meets bfloat16 weights) and
    device as `like`."""
    if as_autocast(t.dtype, t.device) != as_autocast(like.dtype, like.device):
        raise ValueError(f"{name}: expected dtype {like.dtype} (the parameters'), got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name}: expected device {like.device} (the parameters'), "
                         f"got {t.device}")


def check_input(input, input_size: int, like: Tensor, ranks: tuple[int, ...]) -> None:
    """The input must be a floating tensor of one of `ranks`, with input_size features, at least
    one step, and the parameters' dtype and device."""
    if not isinstance(input, Tensor):
        raise TypeError(f"input: expected a Tensor or PackedSequence, got {type(input).__name__}")
    if input.dim() not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"input: expected a {want} tensor, got {input.dim()}-D "
                         f"of shape {tuple(input.shape)}")
    if input.shape[-1] != input_size:
        raise ValueError(f"input: expected {input_size} features in the last dimension "
                         f"(input_size), got {input.shape[-1]}")
    if not input.is_floating_point():
        raise TypeError(f"input: expected a floating-point tensor, got {input.dtype}")
    check_dtype_device("input", input, like)


def check_packed_indices(input) -> None:
    """A PackedSequence's sorted_indices and unsorted_indices (None, or B integer indices each)
    on its data's device, as PackedSequence.to() keeps them: else they would fail deep inside
    the call, or come back in the output to fail in the caller's pad_packed_sequence."""
    B = int(input.batch_sizes[0]) if len(input.batch_sizes) else 0
    for name in ("sorted_indices", "unsorted_indices"):
        index = getattr(input, name)
        if index is None:
            continue
        if index.device != input.data.device:
            raise ValueError(f"input.{name}: expected device {input.data.device} (the "
                             f"PackedSequence's data), got {index.device}")
        if index.dtype not in (torch.int64, torch.int32) or tuple(index.shape) != (B,):
            raise ValueError(f"input.{name}: expected a ({B},) int64 or int32 tensor (B = "
                             f"batch_sizes[0]), got {tuple(index.shape)} {index.dtype}")


def check_lengths(lengths, T: int, B: int) -> list[int]:
    """lengths: B ints in [1, T], as a list or a CPU integer tensor (like pack_padded_sequence)."""
    if isinstance(lengths, Tensor):
        if lengths.device.type != "cpu":
            raise ValueError(f"lengths: expected a CPU tensor or a list, got a tensor on "
                             f"{lengths.device}")
        if lengths.dim() != 1 or lengths.is_floating_point() or lengths.is_complex():
            raise ValueError(f"lengths: expected a 1-D integer tensor, got {lengths.dim()}-D "
                             f"{lengths.dtype}")
        lengths = lengths.tolist()
    if not isinstance(lengths, (list, tuple)):
        raise TypeError(f"lengths: expected a list or tensor of ints, got {type(lengths).__name__}")
    if len(lengths) != B:
        raise ValueError(f"lengths: expected {B} entries (the batch size), got {len(lengths)}")
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, Integral) or not 1 <= n <= T:
            raise ValueError(f"lengths: expected ints in [1, {T}] (T = input.shape[0]), got {n!r}")
    return [int(n) for n in lengths]


def check_stats_shapes(stats, hidden_size: int, like: Tensor) -> None:
    """Running statistics: (max_length, 4H) for ih/hh, (max_length, H) for c, floating, on the
    parameters' device; num_batches_tracked (max_length,) integer."""
    max_length = stats[0].shape[0] if isinstance(stats[0], Tensor) and stats[0].dim() else 0
    if max_length < 1:
        raise ValueError(f"running_stats: expected max_length >= 1 rows, got {max_length}")
    for field, t in zip(stats._fields, stats):
        width = hidden_size if field.endswith("_c") else 4 * hidden_size
        shape = (max_length,) if field == "num_batches_tracked" else (max_length, width)
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"running_stats.{field}: expected shape {shape}, got {got}")
        if t.device != like.device:
            raise ValueError(f"running_stats.{field}: expected device {like.device}, "
                             f"got {t.device}")
        if (field == "num_batches_tracked") == t.is_floating_point():
            want = "an integer" if field == "num_batches_tracked" else "a floating"
            raise ValueError(f"running_stats.{field}: expected {want} dtype, got {t.dtype}")
