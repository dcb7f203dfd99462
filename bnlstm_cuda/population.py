"""The paper's population statistics: one extra pass over the training data after training."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from .module import BNLSTM, _BNLSTMBase


@torch.no_grad()
def compute_population_statistics(
    model: nn.Module,
    batches: Iterable,
    forward: Optional[Callable] = None,
) -> int:
    """Replace the running statistics of every BNLSTM and BNLSTMCell in `model` by the average
    of the batch statistics over `batches`, as Cooijmans et al. estimate population statistics
    "in an extra pass over the training set".

    Each of them has its buffers reset and runs in training mode with momentum=None (a cumulative
    average, as nn.BatchNorm) and dropout off; every other module is put in eval mode, so nothing
    else changes. Gradients are off. Modes, momenta and dropout are restored afterwards.
    `forward(model, batch)` runs one batch (default: `model(batch)`). Returns the batches seen.
    """
    forward = forward or (lambda m, batch: m(batch))
    bnlstms = [m for m in model.modules() if isinstance(m, _BNLSTMBase)]
    if not bnlstms:
        raise ValueError("model: expected a module containing at least one bnlstm_cuda.BNLSTM "
                         "or BNLSTMCell")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bnlstms}
    dropouts = {m: m.dropout for m in bnlstms if isinstance(m, BNLSTM)}
    seen = 0
    try:
        model.eval()
        for m in bnlstms:
            m.reset_running_stats()
            m.train()
            m.momentum = None
        for m in dropouts:
            m.dropout = 0.0
        for batch in batches:
            forward(model, batch)
            seen += 1
    finally:
        for m, training in modes.items():
            m.training = training
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, dropout in dropouts.items():
            m.dropout = dropout
    return seen
