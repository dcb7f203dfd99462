"""The oracle: a plain autograd BN-LSTM, written to be obviously right and never optimised.

Every fast path in the package is tested against this file. It walks layers, directions, time
steps and each step's set of running sequences in Python, keeps every sequence as its own tensor
(so padding can never leak into a statistic), and lets autograd provide the gradients.

The model, per layer, direction and step t (Cooijmans et al., 2016):

    pre = BN_t(h_{t-1} W_hh^T; gamma_hh, 0) + BN_t(x_t W_ih^T; gamma_ih, 0) + bias
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(BN_t(c_t; gamma_c, beta_c))

Inter-layer dropout is not modelled here: compare against a module with dropout=0.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def batch_norm_step(z, gamma, beta, mean_buf, var_buf, count_buf, row, use_batch, momentum, eps):
    """Normalise z (n, F) per feature, with its batch statistics or with running row `row`.

    With batch statistics the running row moves towards them, BatchNorm style (unbiased
    variance; momentum None means a cumulative average over `count_buf[row]` updates, which the
    caller has already incremented).
    """
    if use_batch:
        n = z.shape[0]
        mean = z.mean(0)
        var = ((z - mean) ** 2).mean(0)
        with torch.no_grad():
            factor = 1.0 / float(count_buf[row]) if momentum is None else momentum
            unbiased = var * n / (n - 1)
            mean_buf[row] = (1 - factor) * mean_buf[row] + factor * mean.to(mean_buf.dtype)
            var_buf[row] = (1 - factor) * var_buf[row] + factor * unbiased.to(var_buf.dtype)
    else:
        mean = mean_buf[row].clone().to(z.dtype)
        var = var_buf[row].clone().to(z.dtype)
    out = (z - mean) / torch.sqrt(var + eps) * gamma
    return out if beta is None else out + beta


def _bn_named(stats, z, gamma, beta, name, row, use_batch, momentum, eps):
    return batch_norm_step(z, gamma, beta, stats["mean_" + name], stats["var_" + name],
                           stats["num_batches_tracked"], row, use_batch, momentum, eps)


def layer(seqs, h0, c0, params, stats, training, momentum, eps, reverse, start_step=0):
    """One layer and direction over a list of sequences.

    seqs: list of B tensors (len_b, input_size), any lengths >= 1, any order.
    h0, c0: (B, H). params: dict with weight_ih, weight_hh, bias (or None), gamma_ih, gamma_hh,
    gamma_c, beta_c. stats: dict with mean_ih, var_ih, mean_hh, var_hh, mean_c, var_c
    (max_length, F) and num_batches_tracked (max_length,), updated in place when training.
    reverse: step s of a sequence reads its element len-1-s (nn.LSTM's convention).
    start_step: the first step is step start_step of the sequence (its statistics row).
    Returns (list of B outputs (len_b, H), h_n (B, H), c_n (B, H)).
    """
    lengths = [s.shape[0] for s in seqs]
    if reverse:
        seqs = [s.flip(0) for s in seqs]
    max_length = stats["mean_ih"].shape[0]
    h = list(h0.unbind(0))
    c = list(c0.unbind(0))
    outs = [[] for _ in seqs]
    for t in range(max(lengths)):
        active = [b for b, n in enumerate(lengths) if n > t]
        row = min(start_step + t, max_length - 1)
        use_batch = training and len(active) >= 2
        if use_batch:
            stats["num_batches_tracked"][row] += 1
        bn = functools.partial(_bn_named, stats, row=row, use_batch=use_batch,
                               momentum=momentum, eps=eps)

        x_t = torch.stack([seqs[b][t] for b in active])
        h_prev = torch.stack([h[b] for b in active])
        c_prev = torch.stack([c[b] for b in active])
        pre = bn(x_t @ params["weight_ih"].t(), params["gamma_ih"], None, "ih")
        pre = pre + bn(h_prev @ params["weight_hh"].t(), params["gamma_hh"], None, "hh")
        if params["bias"] is not None:
            pre = pre + params["bias"]
        i, f, g, o = pre.chunk(4, dim=1)
        c_t = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        h_t = torch.sigmoid(o) * torch.tanh(bn(c_t, params["gamma_c"], params["beta_c"], "c"))
        for j, b in enumerate(active):
            h[b], c[b] = h_t[j], c_t[j]
            outs[b].append(h_t[j])
    outs = [torch.stack(o) for o in outs]
    if reverse:
        outs = [o.flip(0) for o in outs]
    return outs, torch.stack(h), torch.stack(c)


def _layer_tensors(module, k, sfx):
    names = ["weight_ih", "weight_hh", "bias", "gamma_ih", "gamma_hh", "gamma_c", "beta_c"]
    params = {n: getattr(module, f"{n}_l{k}{sfx}", None) for n in names}
    stat_names = ["mean_ih", "var_ih", "mean_hh", "var_hh", "mean_c", "var_c"]
    stats = {n: getattr(module, f"running_{n}_l{k}{sfx}") for n in stat_names}
    stats["num_batches_tracked"] = getattr(module, f"num_batches_tracked_l{k}{sfx}")
    return params, stats


def bnlstm_forward(module, input, hx=None, start_step=0):
    """Run `module`'s parameters and buffers through the oracle, with nn.LSTM's conventions.

    Takes a `bnlstm_cuda.BNLSTM` (only its attributes are read, and its running buffers updated
    when module.training) and the same (input, hx, start_step) as its forward; returns
    (output, (h_n, c_n)).
    """
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise ValueError("the reference does not model inter-layer dropout; use dropout=0")
    dirs = 2 if module.bidirectional else 1
    H = module.hidden_size
    if isinstance(input, PackedSequence):
        padded, lengths = pad_packed_sequence(input)  # original batch order
        lengths = lengths.tolist()
        seqs = [padded[:n, b] for b, n in enumerate(lengths)]
    else:
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else input
        x = x.transpose(0, 1) if module.batch_first and not unbatched else x
        seqs = list(x.unbind(1))
    B = len(seqs)
    if hx is None:
        zeros = seqs[0].new_zeros(module.num_layers * dirs, B, H)
        hx = (zeros, zeros)
    elif not isinstance(input, PackedSequence) and input.dim() == 2:
        hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
    h_n, c_n = [], []
    for k in range(module.num_layers):
        outs = []
        for d in range(dirs):
            params, stats = _layer_tensors(module, k, "_reverse" if d else "")
            idx = k * dirs + d
            o, h, c = layer(
                seqs, hx[0][idx], hx[1][idx], params, stats, module.training,
                module.momentum, module.eps, reverse=bool(d), start_step=start_step,
            )
            outs.append(o)
            h_n.append(h)
            c_n.append(c)
        seqs = [torch.cat(parts, dim=-1) for parts in zip(*outs)]
    h_n, c_n = torch.stack(h_n), torch.stack(c_n)
    if isinstance(input, PackedSequence):
        sorted_idx = input.sorted_indices
        order = range(B) if sorted_idx is None else sorted_idx.tolist()
        padded = torch.nn.utils.rnn.pad_sequence([seqs[b] for b in order])
        data = pack_padded_sequence(padded, [lengths[b] for b in order]).data
        out = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        return out, (h_n, c_n)
    out = torch.stack(seqs, dim=1)
    if input.dim() == 2:
        return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
    if module.batch_first:
        out = out.transpose(0, 1)
    return out, (h_n, c_n)


__all__ = ["batch_norm_step", "layer", "bnlstm_forward"]
