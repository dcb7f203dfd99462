"""BNLSTMCell: nn.LSTMCell's interface over one step of the batch-normalised LSTM, with the step
index the per-step statistics need. Parameters, buffers and argument handling only: the step
runs through the same op as a one-step BNLSTM call (any backend), so its gradients are the op's.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import backends
from .autocast import autocast_dtype
from .functional import run_direction
from .module import BNLSTM, _BNLSTMBase
from .validation import check_bool, check_input, check_int, check_start_step, check_tensor


class BNLSTMCell(_BNLSTMBase):
    """One step of a batch-normalised LSTM layer (Cooijmans et al., 2016), a drop-in for
    nn.LSTMCell plus the step index: `cell(input, hx=None, step=0) -> (h_1, c_1)`.

    The step says which per-step statistics the call uses: in training, the batch statistics of
    this call's rows for the three batch norms (a call with one row has no batch variance and
    uses the running row instead, as BNLSTM's steps do), moving running row
    min(step, max_length - 1) towards them; in evaluation, that row. So T calls with
    step = 0..T-1 and (h, c) carried compute what one BNLSTM call over the T steps computes.

    Parameters and buffers have a one-layer, unidirectional BNLSTM's names and shapes
    (weight_ih_l0, ..., running_mean_ih_l0, ...): a state_dict moves between the two, and
    `BNLSTMCell.from_bnlstm(rnn, layer, reverse)` takes any layer and direction of a BNLSTM.
    Arguments as BNLSTM's; backend picks where the step runs.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        max_length: int = 1000,
        momentum: Optional[float] = 0.1,
        eps: float = 1e-5,
        gamma_init: float = 0.1,
        device=None,
        dtype=None,
        backend: str = "auto",
    ):
        super().__init__(input_size, hidden_size, 1, bias, False, max_length, momentum, eps,
                         gamma_init, backend, device, dtype)

    @classmethod
    def from_bnlstm(cls, rnn: BNLSTM, layer: int = 0, reverse: bool = False) -> BNLSTMCell:
        """A cell holding a copy of one layer and direction of `rnn`: its weights, gammas and
        running statistics, and rnn's max_length, momentum, eps, backend, device and dtype."""
        if not isinstance(rnn, BNLSTM):
            raise TypeError(f"rnn: expected a bnlstm_cuda.BNLSTM, got {type(rnn).__name__}")
        layer = check_int("layer", layer, 0)
        if layer >= rnn.num_layers:
            raise ValueError(f"layer: expected an int in [0, {rnn.num_layers - 1}] (the rnn's "
                             f"num_layers={rnn.num_layers}), got {layer}")
        if check_bool("reverse", reverse) and not rnn.bidirectional:
            raise ValueError("reverse: the rnn is not bidirectional, so it has no reverse "
                             "direction; expected reverse=False")
        like = rnn.weight_ih_l0
        width = rnn.input_size if layer == 0 else rnn.hidden_size * rnn.num_directions
        cell = cls(width, rnn.hidden_size, rnn.bias, rnn.max_length, rnn.momentum, rnn.eps,
                   rnn.gamma_init, like.device, like.dtype, rnn.backend)
        source = rnn.state_dict()
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        cell.load_state_dict({name: source[name[: -len("_l0")] + suffix]
                              for name in cell.state_dict()})
        return cell

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s + (f", max_length={self.max_length}, momentum={self.momentum}, eps={self.eps}, "
                    f"backend={self.backend!r}")

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None,
                step: int = 0) -> tuple[Tensor, Tensor]:
        """input: (B, input_size) or unbatched (input_size,); hx: (h_0, c_0), each (B, H) (or
        (H,) unbatched), or None for zeros; step: this call's step of the sequence, an int >= 0.
        Returns (h_1, c_1), each (B, H) (or (H,))."""
        step = check_start_step(step, False, name="step")
        like = self.weight_ih_l0
        check_input(input, self.input_size, like, ranks=(1, 2))
        unbatched = input.dim() == 1
        x = input.reshape(1, -1, self.input_size)  # one time step of B rows
        shape = (self.hidden_size,) if unbatched else (x.shape[1], self.hidden_size)
        if hx is None:
            h0 = c0 = x.new_zeros(x.shape[1], self.hidden_size)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx: expected a tuple (h_0, c_0), got {type(hx).__name__}")
            check_tensor("hx[0] (h_0)", hx[0], input, shape)
            check_tensor("hx[1] (c_0)", hx[1], input, shape)
            h0, c0 = (t.reshape(x.shape[1], self.hidden_size) for t in hx)
        impl = backends.resolve(self.backend, x.device, autocast_dtype(x.device) or x.dtype)
        _, h1, c1 = run_direction(
            x, None, h0, c0, self.layer_weights(0), self.running_stats(0), reverse=False,
            training=self.training, momentum=self.momentum, eps=self.eps, backend=impl,
            start_step=step,
        )
        return (h1.reshape(shape), c1.reshape(shape))


__all__ = ["BNLSTMCell"]
