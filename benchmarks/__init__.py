"""The benchmark suite: BN-LSTM backends against nn.LSTM (cuDNN on a GPU) and the reference.

`python -m benchmarks.run` measures; `python -m benchmarks.plot` draws the CSV it appends to.
"""
