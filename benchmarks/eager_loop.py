"""What users run today: the BN-LSTM as an eager Python loop over time steps with one
`torch.nn.functional.batch_norm` call per normalisation (cuDNN's batch norm on a GPU),
vectorised over the batch, autograd for the gradients. A baseline beside the reference, which
keeps every sequence apart to be obviously right and is slower than this for it.

One layer and direction over full-length batches (no packing), as the benchmark's shapes are;
running rows per step (row min(t, max_length - 1)), updated in place by batch_norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def eager_loop_forward(module, x: torch.Tensor) -> torch.Tensor:
    """The output (T, B, H) of `module` (a one-layer, one-direction BNLSTM with a float
    momentum), computed step by step with F.batch_norm and the module's own tensors."""
    if module.num_layers != 1 or module.bidirectional or module.momentum is None:
        raise ValueError("eager_loop_forward: one layer, one direction and a float momentum")
    w, stats = module.layer_weights(0), module.running_stats(0)
    last = stats.max_length - 1
    h = x.new_zeros(x.shape[1], module.hidden_size)
    c = h
    outputs = []

    def bn(z, mean, var, row, gamma, beta=None):
        return F.batch_norm(z, mean[row], var[row], gamma, beta, module.training,
                            module.momentum, module.eps)
    for t in range(x.shape[0]):
        row = min(t, last)
        pre = (bn(x[t] @ w.weight_ih.t(), stats.mean_ih, stats.var_ih, row, w.gamma_ih)
               + bn(h @ w.weight_hh.t(), stats.mean_hh, stats.var_hh, row, w.gamma_hh))
        if w.bias is not None:
            pre = pre + w.bias
        i, f, g, o = pre.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(bn(c, stats.mean_c, stats.var_c, row, w.gamma_c,
                                             w.beta_c))
        outputs.append(h)
    return torch.stack(outputs)
