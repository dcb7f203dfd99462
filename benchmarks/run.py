"""`python -m benchmarks.run`: what this BN-LSTM costs against the LSTM you use today.

Times every provider (each bnlstm backend, nn.LSTM = cuDNN on a GPU, FlashRNN where installed,
the eager reference, the reference under torch.compile) in three modes, after checking each
against the reference; prints one table and appends the rows to a long-format CSV.
Without a CUDA device it runs the CPU suite.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

import bnlstm_cuda

from . import measure
from .check import check_provider
from .providers import BASELINE, EAGER_LOOP, REFERENCE, Built, Provider, providers
from .shapes import SUITES, Shape

MODES = ("inference", "train_fwd", "fwd_bwd")
RESULTS = Path(__file__).resolve().parent / "results"
CSV_COLUMNS = (
    "timestamp", "commit", "device", "device_name", "provider", "mode", "launch", "dtype",
    "T", "B", "input_size", "hidden_size", "ms_p50", "ms_p20", "ms_p80", "peak_mem_mb",
    "us_per_step", "tokens_per_s", "reps", "shape_label", "torch", "triton", "cuda", "cudnn",
    "tf32", "threads",
)
# The check before timing runs the first CHECK_STEPS steps of the shape (its B, H and dtype,
# so the same kernels and launch configuration): the reference it compares with is a Python
# loop, over a minute at the paper's 784 steps.
CHECK_STEPS = 32
DEFAULT_LIMITS = {  # largest T*B the references are timed at: Python loops per sequence per step
    "cpu": {"reference": 3200, "reference+compile": 64},
    "cuda": {"reference": 8000, "reference+compile": 64},
}


def make_call(built: Built, x: torch.Tensor, dy: torch.Tensor, mode: str) -> Callable[[], object]:
    """One timed call: eval forward without grad (inference), training forward building the
    graph (train_fwd), or training forward and backward to the input and every parameter."""
    module, forward = built
    module.train(mode != "inference")
    if mode == "inference":
        def call():
            with torch.no_grad():
                return forward(module, x)
        return call
    xg = x.detach().clone().requires_grad_()
    if mode == "train_fwd":
        return lambda: forward(module, xg)
    params = [p for p in module.parameters() if p.requires_grad]
    return lambda: torch.autograd.grad(forward(module, xg), [xg, *params], dy)


def make_template(shape: Shape, device: torch.device) -> bnlstm_cuda.BNLSTM:
    """The BNLSTM every provider copies, with running statistics filled by one training pass
    so that eval mode normalises with something other than mean 0 / var 1."""
    template = bnlstm_cuda.BNLSTM(shape.input_size, shape.hidden_size, max_length=shape.T,
                                  device=device, dtype=shape.dtype)
    with torch.no_grad():
        template(torch.randn(shape.T, shape.B, shape.input_size, device=device,
                             dtype=shape.dtype))
    return template.eval()


def _row(env, shape, provider, mode, launch, timing, peak_mb):
    ms = timing.ms_p50
    return {**env, "provider": provider, "mode": mode, "launch": launch,
            "dtype": str(shape.dtype).replace("torch.", ""), "T": shape.T, "B": shape.B,
            "input_size": shape.input_size, "hidden_size": shape.hidden_size,
            "ms_p50": ms, "ms_p20": timing.ms_p20, "ms_p80": timing.ms_p80,
            "peak_mem_mb": "n/a" if peak_mb is None else round(peak_mb, 1),
            "us_per_step": ms * 1e3 / shape.T, "tokens_per_s": shape.tokens / (ms * 1e-3),
            "reps": timing.reps, "shape_label": shape.label}


def run_shape(shape: Shape, device: torch.device, found: list[Provider], env: dict,
              modes: Iterable[str] = MODES, limits: Optional[dict] = None,
              budget_ms: float = 400.0, graphs: bool = True, tick=lambda n: None):
    """Check each provider at one shape, then time every checked row of a mode against the
    others (measure.time_interleaved: rounds in turn, so the ratios of one run hold on a machine
    whose speed drifts). Returns (rows, notes): measured rows, provider by provider, and one
    line per provider left out and why (failed check, too slow, error)."""
    limits = DEFAULT_LIMITS[device.type] if limits is None else limits
    torch.manual_seed(0)
    template = make_template(shape, device)
    x = torch.randn(shape.T, shape.B, shape.input_size, device=device, dtype=shape.dtype)
    dy = torch.randn(shape.T, shape.B, shape.hidden_size, device=device, dtype=shape.dtype)
    notes, references, checked = [], {}, []
    for provider in found:
        if shape.tokens > limits.get(provider.name, float("inf")):
            notes.append(f"{provider.name}: skipped (too slow above T*B="
                         f"{limits[provider.name]})")
            tick(len(modes))
            continue
        launches = []
        for label, context in [("eager", contextlib.nullcontext), *provider.variants]:
            with context():  # every variant passes the check before it is timed
                failures = _check(provider, template, x[:CHECK_STEPS], dy[:CHECK_STEPS],
                                  references)
            if failures:
                name = provider.name + ("" if label == "eager" else f" ({label})")
                notes.append(f"{name}: FAILED the check against the reference, not timed: "
                             + "; ".join(failures[:3]))
            else:
                launches.append((label, context))
        if launches:
            checked.append((provider, launches))
        else:
            tick(len(modes))
    rows = []
    for mode in modes:
        timed = []  # (provider, launch label, context, call)
        for provider, launches in checked:
            call = make_call(provider.build(template), x, dy, mode)
            timed += [(provider.name, label, context, call) for label, context in launches]
            if launches[0][0] == "eager" and graphs and provider.graphs and device.type == "cuda":
                try:
                    replay = measure.cuda_graph_replay(call)
                except Exception as error:  # capture refuses host syncs: say so, keep eager
                    notes.append(f"{provider.name} {mode}: no CUDA graph ({error})")
                else:
                    timed.append((provider.name, "cuda_graph", contextlib.nullcontext, replay))
        timings = measure.time_interleaved([(context, call) for _, _, context, call in timed],
                                           device, budget_ms=budget_ms)
        for (name, label, context, call), timing in zip(timed, timings):
            with context():
                peak = measure.peak_memory_mb(call, device)
            rows.append(_row(env, shape, name, mode, label, timing, peak))
        tick(len(checked))
    order = {p.name: k for k, p in enumerate(found)}
    rows.sort(key=lambda r: order[r["provider"]])  # stable: modes, then launches, in order
    return rows, notes


def _check(provider, template, x, dy, references) -> list[str]:
    """check_provider's failures; a backend that cannot run this shape says why, and is out."""
    try:
        return check_provider(provider, template, x, dy, references)
    except Exception as error:
        return [f"raised {type(error).__name__}: {error}"]


def _ratio(rows, row, provider):
    """row's time over `provider`'s in the same shape and mode (same launch if measured)."""
    same = [r for r in rows if r["provider"] == provider and r["mode"] == row["mode"]]
    match = [r for r in same if r["launch"] == row["launch"]] or \
            [r for r in same if r["launch"] == "eager"]
    return row["ms_p50"] / match[0]["ms_p50"] if match else None


def format_table(shape: Shape, rows: list[dict], notes: list[str], baseline_label: str) -> str:
    """One block per shape: time, per-step cost, rate, memory, ratios to the baseline and to
    the eager BN loop (what users write today), and speedup over the eager reference."""
    head = (f"{'provider':<18} {'mode':<10} {'launch':<10} {'ms p50 [p20, p80]':>26} "
            f"{'us/step':>9} {'tokens/s':>10} {'peak MB':>8} {'x ' + baseline_label:>13} "
            f"{'x eager loop':>12} {'vs reference':>12}")
    lines = [f"== {shape.describe()}", head]
    for r in rows:
        to_base = _ratio(rows, r, BASELINE)
        to_loop = _ratio(rows, r, EAGER_LOOP)
        from_ref = _ratio(rows, r, REFERENCE)
        peak = r["peak_mem_mb"]
        lines.append(
            f"{r['provider']:<18} {r['mode']:<10} {r['launch']:<10} "
            f"{r['ms_p50']:>9.3f} [{r['ms_p20']:>6.3f}, {r['ms_p80']:>7.3f}] "
            f"{r['us_per_step']:>9.1f} {r['tokens_per_s']:>10.3g} "
            f"{peak if isinstance(peak, str) else f'{peak:.1f}':>8} "
            f"{'n/a' if to_base is None else f'{to_base:.2f}x':>13} "
            f"{'n/a' if to_loop is None else f'{to_loop:.2f}x':>12} "
            f"{'n/a' if from_ref is None else f'{1 / from_ref:.1f}x faster':>12}")
    lines += [f"   {note}" for note in notes]
    return "\n".join(lines)


def append_csv(rows: list[dict], path: Path) -> None:
    """Append measured rows (the long format every plot is drawn from); header on a new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _progress(total: int):
    """On a terminal, tqdm's bar when installed (the bench extra) or a counter; in a log or a
    pipe nothing, where each shape's table, printed as soon as it is measured, marks progress
    (a bar redrawn with carriage returns runs together on one line there)."""
    if not sys.stderr.isatty():
        return (lambda n=1: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:
        done = [0]

        def tick(n=1):
            done[0] += n
            print(f"\r{done[0]}/{total} measurements", end="", file=sys.stderr, flush=True)
        return tick, lambda: print(file=sys.stderr)
    bar = tqdm(total=total, unit="measurement", file=sys.stderr)
    return bar.update, bar.close


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when present, else the CPU suite")
    parser.add_argument("--suite", choices=("default", "full"), default="default")
    parser.add_argument("--providers", nargs="*", default=None,
                        help="only providers whose name contains one of these")
    parser.add_argument("--modes", nargs="*", choices=MODES, default=list(MODES))
    parser.add_argument("--budget-ms", type=float, default=400.0,
                        help="time spent timing each measurement (at least 5 calls)")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 in cuBLAS and cuDNN (off by default: fp32 means fp32)")
    parser.add_argument("--no-graphs", action="store_true", help="skip CUDA-graph timings")
    parser.add_argument("--csv", type=Path, default=RESULTS / "results.csv")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "auto" and not cuda:
        print("No CUDA device: running the CPU suite (the backends that run on the CPU vs nn.LSTM "
              "and the eager BN loop on the CPU). On a GPU this command measures against cuDNN.")
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    shapes = SUITES[(device.type, args.suite)]
    found = [p for p in providers(device)
             if args.providers is None or any(s in p.name for s in args.providers)]
    env = measure.environment(device)
    print(f"{env['device_name']} | torch {env['torch']} | triton {env['triton']} | CUDA "
          f"{env['cuda']} | cuDNN {env['cudnn']} | TF32 {env['tf32']} | threads "
          f"{env['threads']} | commit {env['commit']} | {env['timestamp']}")
    print("backends:", {n: r for n, (_, r) in bnlstm_cuda.available_backends().items()})
    tick, close = _progress(len(shapes) * len(found) * len(args.modes))
    baseline_label = "cuDNN" if cuda else "nn.LSTM"
    for shape in shapes:  # each shape's table and CSV rows as soon as it is measured
        rows, notes = run_shape(shape, device, found, env, modes=args.modes,
                                budget_ms=args.budget_ms, graphs=not args.no_graphs, tick=tick)
        print("\n" + format_table(shape, rows, notes, baseline_label), flush=True)
        if not args.no_csv:
            append_csv(rows, args.csv)
    close()
    print(f"\nx {baseline_label}: time over {BASELINE}'s in the same run (lower is better); "
          f"x eager loop: time over the {EAGER_LOOP}'s (per-step F.batch_norm, "
          "benchmarks/eager_loop.py); "
          "vs reference: the eager reference's time over this row's.")
    if not args.no_csv:
        print(f"rows appended to {args.csv}")


if __name__ == "__main__":
    main()
