"""BNLSTM: nn.LSTM's interface over the batch-normalised LSTM op. Holds parameters, buffers and
argument handling only; the math is in functional.run_direction and the backends."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import backends
from .autocast import autocast_dtype
from .functional import run_direction
from .layer_state import LayerWeights, RunningStats
from .validation import (
    check_backend_name,
    check_input,
    check_int,
    check_momentum,
    check_packed_indices,
    check_real,
    check_start_step,
    check_tensor,
)

_STAT_NAMES = ("mean_ih", "var_ih", "mean_hh", "var_hh", "mean_c", "var_c")


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Running statistics are float32 for half-precision parameters, as cuDNN keeps them."""
    return torch.promote_types(dtype, torch.float32)


class _BNLSTMBase(nn.Module):
    """The parameters and buffers of BN-LSTM layers (every layer and direction its own weights,
    gammas and per-step running statistics), shared by BNLSTM and BNLSTMCell so that a
    trained layer moves between them by state_dict."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bias: bool,
                 bidirectional: bool, max_length: int, momentum: Optional[float], eps: float,
                 gamma_init: float, backend: str, device, dtype):
        super().__init__()
        self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.max_length = check_int("max_length", max_length, 1)
        self.momentum = check_momentum(momentum)
        self.eps = check_real("eps", eps, 0.0)
        self.gamma_init = check_real("gamma_init", gamma_init)
        self.backend = check_backend_name(backend, backends.NAMES)
        self.bias = bool(bias)
        self.bidirectional = bool(bidirectional)
        factory = {"device": device, "dtype": dtype}
        stats_dtype = _stats_dtype(dtype or torch.get_default_dtype())
        H, G = hidden_size, 4 * hidden_size
        width = max(input_size, H * self.num_directions)
        for what, rows, cols in (("weight_ih", G, width), ("running statistics", max_length, G)):
            if rows * cols >= 2**60:  # no device holds it; torch would fail with its own words
                raise ValueError(f"input_size={input_size}, hidden_size={hidden_size}, "
                                 f"max_length={max_length}: {what} would need {rows} x {cols} "
                                 f"elements, more than any device can hold")
        for k, sfx in self._layer_keys():
            width = input_size if k == 0 else H * self.num_directions
            shapes = {"weight_ih": (G, width), "weight_hh": (G, H), "bias": (G,),
                      "gamma_ih": (G,), "gamma_hh": (G,), "gamma_c": (H,), "beta_c": (H,)}
            for name, shape in shapes.items():
                if name != "bias" or self.bias:
                    self.register_parameter(f"{name}_l{k}{sfx}",
                                            nn.Parameter(torch.empty(shape, **factory)))
            for name in _STAT_NAMES:
                width = H if name.endswith("_c") else G
                self.register_buffer(f"running_{name}_l{k}{sfx}",
                                     torch.empty(max_length, width, device=device,
                                                 dtype=stats_dtype))
            self.register_buffer(f"num_batches_tracked_l{k}{sfx}",
                                 torch.zeros(max_length, dtype=torch.long, device=device))
        self.reset_parameters()


    def _load_from_state_dict(self, state_dict, prefix, *args):
        """A checkpoint's running statistics must have max_length rows: fewer would leave rows
        unset and more would be cut, so either is an error that says what to build."""
        stats = state_dict.get(f"{prefix}running_mean_ih_l0")
        if isinstance(stats, Tensor) and stats.dim() == 2 and stats.shape[0] != self.max_length:
            raise ValueError(f"max_length: the checkpoint holds running statistics for "
                             f"max_length={stats.shape[0]} steps, this model has "
                             f"max_length={self.max_length}; build it with "
                             f"max_length={stats.shape[0]}")
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _apply(self, fn, recurse=True):
        """Casting the module to half precision (.half(), .to(torch.bfloat16)) keeps the running
        statistics in float32, from their float32 values: a variance overflows float16 long
        before the activations do."""
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf.is_floating_point() and buf.dtype != _stats_dtype(buf.dtype):
                self._buffers[name] = before[name].to(buf.device, _stats_dtype(buf.dtype))
        return self

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _layer_keys(self):
        for k in range(self.num_layers):
            for sfx in ("", "_reverse")[: self.num_directions]:
                yield k, sfx

    def layer_weights(self, layer: int, reverse: bool = False) -> LayerWeights:
        """The learnable tensors of one layer and direction, as the functional op takes them."""
        sfx = "_reverse" if reverse else ""
        return LayerWeights(*(getattr(self, f"{name}_l{layer}{sfx}", None)
                              for name in LayerWeights._fields))

    def running_stats(self, layer: int, reverse: bool = False) -> RunningStats:
        """The running-statistics buffers of one layer and direction (updated in place)."""
        sfx = "_reverse" if reverse else ""
        return RunningStats(*(getattr(self, f"running_{name}_l{layer}{sfx}") for name in
                              _STAT_NAMES), getattr(self, f"num_batches_tracked_l{layer}{sfx}"))

    def reset_running_stats(self) -> None:
        for k, sfx in self._layer_keys():
            stats = self.running_stats(k, bool(sfx))
            for name in _STAT_NAMES:
                getattr(stats, name).fill_(1.0 if name.startswith("var") else 0.0)
            stats.num_batches_tracked.zero_()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        H = self.hidden_size
        for k, sfx in self._layer_keys():
            w = self.layer_weights(k, bool(sfx))
            for weight in (w.weight_ih, w.weight_hh):
                for block in weight.split(H, dim=0):  # QR has no half-precision kernels
                    wide = torch.empty_like(block, dtype=torch.promote_types(block.dtype,
                                                                             torch.float32))
                    block.copy_(nn.init.orthogonal_(wide))
            if w.bias is not None:
                w.bias.zero_()
                w.bias[H: 2 * H] = 1.0
            for gamma in (w.gamma_ih, w.gamma_hh, w.gamma_c):
                gamma.fill_(self.gamma_init)
            w.beta_c.zero_()
        self.reset_running_stats()


class BNLSTM(_BNLSTMBase):
    """Batch-normalised LSTM (Cooijmans et al., 2016, "Recurrent Batch Normalization"), a drop-in
    for nn.LSTM: same constructor arguments, shapes, hx, batch_first and PackedSequence handling.

    Per layer, direction and step t, with BN_t normalising each feature over the batch:
        pre = BN_t(h_{t-1} W_hh^T; gamma_hh, 0) + BN_t(x_t W_ih^T; gamma_ih, 0) + bias  (i,f,g,o)
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(BN_t(c_t; gamma_c, beta_c))

    Statistics: in training, step t uses the batch statistics (biased variance) of the sequences
    still running at t, and moves row min(t, max_length-1) of the running buffers towards them
    (unbiased variance, `momentum`; momentum=None keeps a cumulative average, see
    `bnlstm_cuda.compute_population_statistics`). A training step with fewer than 2 running
    sequences has no batch variance: it normalises with its running row and leaves it unchanged.
    In evaluation, step t uses row min(t, max_length-1): steps past the longest trained length
    reuse the last row, as the paper prescribes. A call that continues a sequence counts t from
    its start_step (see forward); bnlstm_cuda.BNLSTMCell is the one-step form.

    Initialisation, following the authors' scripts:
        gamma_ih = gamma_hh = gamma_c = gamma_init (0.1: with 1, gradients vanish through time);
        beta_c = 0; each gate block of weight_ih and of weight_hh its own (semi-)orthogonal
        matrix; bias 0 except the forget-gate block at 1. There is one bias per gate (the BN
        shifts of both products would be redundant with it).

    Args beyond nn.LSTM's: max_length (rows of per-step statistics), momentum, eps, gamma_init,
    backend ("auto" or a name from `bnlstm_cuda.available_backends()`).
    Dropout between layers is applied in training, as in nn.LSTM; proj_size is not supported.

    Precision: half-precision layers compute statistics and the cell state in float32 and keep
    the running statistics in float32 (also after .half() or .to(torch.bfloat16)). Under
    torch.autocast the layer does what nn.LSTM does: input, states and weights are cast to the
    autocast dtype, which the outputs and final states come back in; parameter gradients are in
    the parameters' dtype (see bnlstm_cuda/autocast.py).
    Statistics are per process: under DistributedDataParallel each replica normalises with its
    own batch, as nn.BatchNorm1d does, and DDP's broadcast_buffers copies rank 0's running
    statistics to every rank before each forward (README: how to average them over ranks).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        max_length: int = 1000,
        momentum: Optional[float] = 0.1,
        eps: float = 1e-5,
        gamma_init: float = 0.1,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__(input_size, hidden_size, num_layers, bias, bidirectional, max_length,
                         momentum, eps, gamma_init, backend, device, dtype)
        self.dropout = check_real("dropout", dropout, 0.0, 1.0)
        self.batch_first = bool(batch_first)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, **overrides) -> BNLSTM:
        """A BNLSTM with a trained nn.LSTM's weights, shape options, device and dtype, its bias
        the sum bias_ih + bias_hh. Keyword overrides go to the constructor (max_length,
        momentum, eps, gamma_init, backend, batch_first, dropout, device, dtype).

        The gammas start at gamma_init (0.1, the paper's), so the result normalises from the
        start; with gamma_init=1.0, eps=0.0 and fresh statistics it computes in eval exactly what
        the lstm computes.
        """
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"lstm: expected a torch.nn.LSTM, got {type(lstm).__name__}")
        if lstm.proj_size:
            raise ValueError(f"lstm: proj_size is not supported, got {lstm.proj_size}")
        fixed = sorted({"input_size", "hidden_size", "num_layers", "bias", "bidirectional"}
                       & overrides.keys())
        if fixed:
            raise TypeError(f"from_lstm: {fixed} come from the lstm and cannot be overridden")
        like = lstm.weight_ih_l0
        kwargs = dict(input_size=lstm.input_size, hidden_size=lstm.hidden_size,
                      num_layers=lstm.num_layers, bias=lstm.bias, batch_first=lstm.batch_first,
                      dropout=lstm.dropout, bidirectional=lstm.bidirectional, device=like.device,
                      dtype=like.dtype)
        model = cls(**{**kwargs, **overrides})
        with torch.no_grad():
            for k, sfx in model._layer_keys():
                w = model.layer_weights(k, bool(sfx))
                w.weight_ih.copy_(getattr(lstm, f"weight_ih_l{k}{sfx}"))
                w.weight_hh.copy_(getattr(lstm, f"weight_hh_l{k}{sfx}"))
                if w.bias is not None:
                    w.bias.copy_(getattr(lstm, f"bias_ih_l{k}{sfx}")
                                 + getattr(lstm, f"bias_hh_l{k}{sfx}"))
        return model

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + (f", max_length={self.max_length}, momentum={self.momentum}, eps={self.eps}, "
                    f"backend={self.backend!r}")

    def _initial_state(self, hx, x: Tensor, unbatched: bool, sorted_indices):
        """(h0, c0), each (num_layers * num_directions, B, H), in the sorted batch order."""
        B = x.shape[1]
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if hx is None:
            zeros = x.new_zeros(shape)
            return zeros, zeros
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"hx: expected a tuple (h_0, c_0), got {type(hx).__name__}")
        want = (shape[0], shape[2]) if unbatched else shape
        check_tensor("hx[0] (h_0)", hx[0], x, want)
        check_tensor("hx[1] (c_0)", hx[1], x, want)
        h0, c0 = (t.unsqueeze(1) for t in hx) if unbatched else hx
        if sorted_indices is not None:
            h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        return h0, c0

    def forward(self, input, hx: Optional[tuple[Tensor, Tensor]] = None, *, start_step: int = 0):
        """input: (T, B, input_size), (B, T, input_size) if batch_first, (T, input_size)
        unbatched, or a PackedSequence. hx: (h_0, c_0), each (num_layers * num_directions, B, H),
        or None for zeros. Returns output (T, B, D*H) (or a PackedSequence) and (h_n, c_n).

        start_step: the call's first step is step start_step of the sequence, so step t uses (in
        evaluation) or updates (in training) running row min(start_step + t, max_length - 1).
        To continue a sequence (sampling one step per call, a stream in chunks, truncated
        backpropagation through time), pass the (h_n, c_n) of the previous call as hx and the
        steps it has run so far as start_step. Unidirectional only: a reverse direction reads
        each sequence from its end, which a call cannot continue."""
        start_step = check_start_step(start_step, self.bidirectional)
        like = self.weight_ih_l0
        packed = isinstance(input, PackedSequence)
        sorted_indices = unsorted_indices = lengths = None
        unbatched = False
        if packed:
            check_input(input.data, self.input_size, like, ranks=(2,))
            check_packed_indices(input)
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            x, lengths = pad_packed_sequence(PackedSequence(input.data, input.batch_sizes))
            lengths = lengths.tolist()
        else:
            check_input(input, self.input_size, like, ranks=(2, 3))
            unbatched = input.dim() == 2
            if unbatched:
                x = input.unsqueeze(1)
            else:
                x = input.transpose(0, 1) if self.batch_first else input
            if x.shape[0] == 0:
                raise ValueError("input: expected at least one time step, got 0")
        h0, c0 = self._initial_state(hx, x, unbatched, sorted_indices)
        impl = backends.resolve(self.backend, x.device, autocast_dtype(x.device) or x.dtype)
        h_n, c_n = [], []
        for k in range(self.num_layers):
            ys = []
            for d in range(self.num_directions):
                idx = k * self.num_directions + d
                y, h, c = run_direction(
                    x, lengths, h0[idx], c0[idx], self.layer_weights(k, bool(d)),
                    self.running_stats(k, bool(d)), reverse=bool(d), training=self.training,
                    momentum=self.momentum, eps=self.eps, backend=impl, start_step=start_step,
                )
                ys.append(y)
                h_n.append(h)
                c_n.append(c)
            x = torch.cat(ys, dim=-1) if len(ys) > 1 else ys[0]
            if self.dropout > 0 and self.training and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if packed:
            data = pack_padded_sequence(x, lengths).data
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
                c_n = c_n.index_select(1, unsorted_indices)
            out = PackedSequence(data, input.batch_sizes, sorted_indices, unsorted_indices)
            return out, (h_n, c_n)
        if unbatched:
            return x.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (x.transpose(0, 1) if self.batch_first else x), (h_n, c_n)
