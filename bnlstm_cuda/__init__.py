"""bnlstm_cuda: the batch-normalised LSTM of Cooijmans et al. (2016) for PyTorch.

Swap `nn.LSTM` for `bnlstm_cuda.BNLSTM` and `nn.LSTMCell` for `bnlstm_cuda.BNLSTMCell`;
`bnlstm_cuda.bnlstm` is the op for one layer and direction; `bnlstm_cuda.reference` holds the
plain autograd oracle.
"""

from . import reference
from .backends import available_backends
from .cell import BNLSTMCell
from .functional import bnlstm
from .layer_state import LayerWeights, RunningStats
from .module import BNLSTM
from .population import compute_population_statistics

__version__ = "0.1.0"

__all__ = [
    "BNLSTM",
    "BNLSTMCell",
    "LayerWeights",
    "RunningStats",
    "available_backends",
    "bnlstm",
    "compute_population_statistics",
    "reference",
]
