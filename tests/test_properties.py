"""Property-based: random shapes, lengths and flags, every backend that runs here against the
oracle (outputs, final states, every gradient and buffer), in float64."""

from __future__ import annotations

import torch
from conftest import compare_with_reference, packed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence

from bnlstm_cuda import BNLSTM

D = torch.float64


@st.composite
def cases(draw):
    T, B = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    lengths = draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    options = dict(
        num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()), batch_first=draw(st.booleans()),
        max_length=draw(st.integers(1, 4)), momentum=draw(st.sampled_from([0.1, 0.5, None])),
    )
    sizes = dict(input_size=draw(st.integers(1, 3)), hidden_size=draw(st.integers(1, 5)))
    flags = dict(training=draw(st.booleans()), with_hx=draw(st.booleans()),
                 seed=draw(st.integers(0, 2**16)))
    return T, B, lengths, options, sizes, flags


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # seeded per example
@given(case=cases())
def test_matches_the_oracle(backend, case):
    T, B, lengths, options, sizes, flags = case
    torch.manual_seed(flags["seed"])
    model = BNLSTM(**sizes, **options, backend=backend, dtype=D).train(flags["training"])
    L, H, F = model.num_layers * model.num_directions, sizes["hidden_size"], sizes["input_size"]

    def make_input():
        if lengths is not None:
            p = packed(torch.randn(T, B, F, dtype=D), lengths)
            return PackedSequence(p.data.requires_grad_(), p.batch_sizes, p.sorted_indices,
                                  p.unsorted_indices)
        shape = (B, T, F) if options["batch_first"] else (T, B, F)
        return torch.randn(*shape, dtype=D).requires_grad_()

    def make_hx():
        return tuple(torch.randn(L, B, H, dtype=D).requires_grad_() for _ in range(2))

    compare_with_reference(model, make_input, steps=2,
                           hx_fn=make_hx if flags["with_hx"] else None)
