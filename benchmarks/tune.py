"""Time the Triton backend under each launch configuration at the issue's target shape, so one
GPU run says which tiles `triton_step.pick_config` should choose (it guesses until then).

Each candidate runs the training forward alone, then forward + backward (the launches the
benchmark's train_fwd and fwd_bwd modes make), so the two halves' gains can be told apart, with
CUDA-graph replay as in the default launch; its gradients are compared with those
under the launcher's own choice (the same math in another summation order, so they differ by
rounding only), and a candidate that fails to compile says so.

Run on a GPU from the repository root: `python -m benchmarks.tune` (about a minute).
"""

from __future__ import annotations

import argparse
from typing import Iterator

import torch

from bnlstm_cuda.backends import triton_step
from bnlstm_cuda.backends.triton_step import Config

from . import measure
from .providers import backend_provider
from .run import make_call, make_template
from .shapes import BF16, FP32, Shape

# the launcher's own configurations; narrower programs (more of them: H / block_h programs share
# the SMs; the backward keeps 16 units); wider reductions, other warp counts, taller row chunks
CANDIDATES = (*triton_step.CONFIGS, Config(64, 4, 32, 4), Config(64, 8, 32, 4),
              Config(64, 8, 64, 4), Config(64, 16, 64, 4), Config(64, 16, 32, 2),
              Config(64, 16, 32, 8), Config(128, 16, 32, 8))
SHAPES = (Shape(100, 64, 512, 512, FP32, "fastrnns default"),
          Shape(100, 64, 512, 512, BF16, "fastrnns default"))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def tune_shape(shape: Shape, device: torch.device, budget_ms: float,
               candidates=CANDIDATES) -> Iterator[str]:
    """One line per candidate, as it is measured (a compile takes seconds): the configuration
    the forward and the backward launch with (the backward keeps 16 units per program), the
    training forward's time and the forward + backward's, and how far the input and weight_ih
    gradients are from those under the launcher's own choice."""
    torch.manual_seed(0)
    template = make_template(shape, device)
    x = torch.randn(shape.T, shape.B, shape.input_size, device=device, dtype=shape.dtype)
    dy = torch.randn(shape.T, shape.B, shape.hidden_size, device=device, dtype=shape.dtype)
    provider = backend_provider("triton", device)
    chosen = triton_step.plan(shape.B, shape.hidden_size, device).cfg
    want = None
    yield shape.describe()
    yield (f"{'forward (B,H,K,warps)':24} {'backward':18} {'train_fwd ms':>12} "
           f"{'fwd_bwd ms':>11} {'rel. diff':>10}")
    for cfg in (chosen, *(c for c in candidates if c != chosen)):
        label = f"{tuple(cfg)}{' (picked)' if cfg == chosen else ''}"
        try:
            with triton_step.use_config(cfg):
                backward = triton_step.plan(shape.B, shape.hidden_size, device,
                                            backward=True).cfg
                forward = make_call(provider.build(template), x, dy, "train_fwd")
                forward_ms = measure.time_calls(forward, device, budget_ms=budget_ms).ms_p50
                call = make_call(provider.build(template), x, dy, "fwd_bwd")
                grads = [g.clone() for g in call()]
                timing = measure.time_calls(call, device, budget_ms=budget_ms)
        except Exception as error:  # a tile that does not compile or fit says so
            yield f"{label:24} failed: {type(error).__name__}: {str(error)[:80]}"
            continue
        want = want or grads
        diff = max(_relative(grads[0], want[0]), _relative(grads[1], want[1]))
        yield (f"{label:24} {str(tuple(backward)):18} {forward_ms:>12.3f} "
               f"{timing.ms_p50:>11.3f} {diff:>10.1e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.tune needs a CUDA device (it times Triton launches)")
    device = torch.device("cuda")
    for shape in SHAPES:
        for line in tune_shape(shape, device, args.budget_ms):
            print(line, flush=True)
        print()


if __name__ == "__main__":
    main()
