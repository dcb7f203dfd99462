"""Compile the Triton kernels for sm_80 and sm_90 without a GPU, as the JIT would, and report
registers, spills, shared memory, tensor-core instructions and programs per step.

Two sets of compiles, each through the JIT's own binder (so pointers, and int arguments that are
multiples of 16, get divisibility 16 exactly as at run time), with the flags the launchers pass:
- every configuration the launcher can pick, with B, H and the input width not multiples of 16
  (what runs at the paper's H=100), per dtype (fp32 at its default precision, tf32 where
  torch.backends.cuda.matmul.allow_tf32 is on), and on sm_90 the persistent launches (one
  program, every step);
- what triton_step.plan chooses at the benchmark's GPU shapes (benchmarks/shapes.py), sm_90, with
  their programs per step against an H100's 132 SMs (programs/132).
Exits non-zero when anything spills (STACK or LOCAL bytes in the cubin: spilled registers land
in STACK), shared memory is over the chip's limit, or an fp32, tf32, bf16 or fp16 compile has no
tensor-core instruction (HMMA/HGMMA in its SASS). Run with TRITON_INTERPRET unset:
`python tools/triton_report.py`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

# the repository root: benchmarks/ (the GPU shapes) is not installed, and `python
# tools/triton_report.py` puts only tools/ on the path
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # max dynamic shared memory per block
H100_SMS = 132
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp64")  # tf32: fp32 with allow_tf32 on
MMA_SASS = re.compile(r"\b(HGMMA|HMMA|DMMA)\.")  # DMMA: float64's, not counted as tensor cores
DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16",
          "fp64": "float64"}
# the hoisted forward first, chunked and with every row in one chunk (ONE_CHUNK: in registers);
# the others take pick_config's short configurations
KERNELS = (("_fwd_step_kernel", None), ("_fwd_step_kernel", "ONE_CHUNK"),
           ("_fwd_step_kernel", "FUSED_INPUT"), ("_bwd_step_kernel", None),
           ("_bwd_step_kernel", "ONE_CHUNK"))
HOISTED = KERNELS[:2]
IO_POINTERS = {"x_ptr", "w_ih_ptr", "xw_ptr", "y_ptr", "w_hh_ptr", "gamma_ih_ptr",
               "gamma_hh_ptr", "bias_ptr", "gamma_c_ptr", "beta_c_ptr", "h_n_ptr", "c_n_ptr",
               "dy_ptr"}  # the layer's dtype; the rest accumulate, but
STEP_POINTERS = {"batch_sizes_ptr", "rows_ptr", "use_batch_ptr"}  # int32
NOT_MULTIPLE_OF_16 = 17


def _arguments(fn, flags, plan, dtype, acc, sizes, variant):
    """The launch's arguments as the launcher passes them: mock tensors (16-byte aligned, as the
    caching allocator's are) of the layer's or the accumulator dtype, the sizes, the flags."""
    import triton.language as tl
    from triton.runtime.jit import MockTensor

    cfg = plan.cfg
    constexprs = dict(flags, USE_BATCH=True, HAS_BIAS=True, FUSED_INPUT=variant == "FUSED_INPUT",
                      ONE_CHUNK=variant == "ONE_CHUNK", FACTOR_IN_MEMORY=False,
                      PERSISTENT=plan.persistent, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h,
                      BLOCK_K=cfg.block_k)
    args = []
    for param in fn.params:
        if param.is_constexpr:
            args.append(constexprs[param.name])
        elif param.name.endswith("_ptr"):
            args.append(MockTensor(tl.int32 if param.name in STEP_POINTERS
                                   else dtype if param.name in IO_POINTERS else acc))
        elif param.annotation_type.startswith("fp"):
            args.append(0.1)
        else:  # the per-step numbers are never specialised; B, H, K_in as given
            args.append(sizes.get(param.name, NOT_MULTIPLE_OF_16))
    return args


def _compile(fn, args, options, arch):
    """triton.compile of what fn[grid](*args, **options) would compile for sm_<arch>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(options, debug=False)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=options.__dict__)


def _cubin_tool(tool, cubin, *flags):
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([path, *flags, f.name], capture_output=True, text=True,
                              check=True).stdout


def compile_one(job):
    """Compile one job (kernel, variant, precision, arch, plan or None, shape or None); return
    its report row."""
    import torch
    import triton.language as tl

    from bnlstm_cuda.backends import triton_step

    kernel_name, variant, precision, arch, launch, shape = job
    fn = getattr(triton_step, kernel_name)
    dtype = getattr(torch, DTYPES[precision])
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    sizes = {}
    if shape is not None:
        sizes = dict(B=shape.B, H=shape.hidden_size, K_in=shape.input_size)
        launch = triton_step.plan(shape.B, shape.hidden_size, torch.device("cuda"),
                                  backward=kernel_name == "_bwd_step_kernel",
                                  fused_input=variant == "FUSED_INPUT", sms=H100_SMS)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    flags = triton_step._kernel_flags(torch.device("cuda"), acc)
    args = _arguments(fn, flags, launch, getattr(tl, DTYPES[precision]),
                      tl.float64 if precision == "fp64" else tl.float32, sizes, variant)
    compiled = _compile(fn, args, triton_step.launch_options(launch.cfg), arch)
    usage = _cubin_tool("cuobjdump", compiled.asm["cubin"], "--dump-resource-usage")
    regs, stack, local = (int(re.search(rf"{k}:(\d+)", usage).group(1))
                          for k in ("REG", "STACK", "LOCAL"))
    sass = _cubin_tool("cuobjdump", compiled.asm["cubin"], "-sass")
    mma = {kind: n for kind in ("HGMMA", "HMMA", "DMMA")
           if (n := MMA_SASS.findall(sass).count(kind))}
    shared = compiled.metadata.shared
    programs = launch.grid[0] if shape is not None else None
    problems = []
    if stack or local:
        problems.append("spills")
    if shared > SHARED_LIMIT[arch]:
        problems.append("shared memory")
    if precision != "fp64" and not (mma.get("HGMMA") or mma.get("HMMA")):
        problems.append("no tensor cores")
    variant = "+".join(v for v in (variant, launch.persistent and "PERSISTENT") if v)
    return dict(kernel=kernel_name + (f"+{variant}" if variant else ""), cfg=tuple(launch.cfg),
                precision=precision, arch=arch, regs=regs, spill=stack + local, shared=shared,
                mma=" ".join(f"{n} {kind}" for kind, n in mma.items()) or "none",
                programs=programs,
                shape=shape.label if shape is not None else "B, H not x16", problems=problems,
                input_precision=flags["INPUT_PRECISION"])


def _jobs(args):
    import torch

    from benchmarks.shapes import GPU_DEFAULT
    from bnlstm_cuda.backends import triton_step

    # every configuration pick_config can give, and the persistent launches (sm_90)
    plans = [(name, variant, triton_step.Plan(cfg, None, False)) for name, variant in KERNELS
             for cfg in (triton_step.CONFIGS + triton_step.NARROW_CONFIGS
                         if (name, variant) in HOISTED else triton_step.SHORT_CONFIGS)]
    plans += [(name, variant, triton_step.Plan(triton_step.PERSISTENT_CONFIG, (1,), True))
              for name, variant in KERNELS if variant != "FUSED_INPUT"]
    jobs = [(name, variant, precision, arch, launch, None)
            for name, variant, launch in plans for precision in args.precision
            for arch in args.arch if arch == 90 or not launch.persistent]
    if 90 in args.arch:  # the launches the benchmark's shapes get
        by_dtype = {getattr(torch, v): k for k, v in DTYPES.items() if k != "tf32"}
        jobs += [(name, variant, by_dtype[shape.dtype], 90, None, shape)
                 for shape in GPU_DEFAULT for name, variant in KERNELS
                 if variant == "FUSED_INPUT" or _takes(shape, name, variant)]
    return jobs


def _takes(shape, name, variant) -> bool:
    """Whether kernel `name` (the hoisted forward or the backward) at `shape` runs `variant`
    (ONE_CHUNK where the batch fits one chunk of the launch's configuration)."""
    import torch

    from bnlstm_cuda.backends import triton_step

    cfg = triton_step.plan(shape.B, shape.hidden_size, torch.device("cuda"),
                           backward=name == "_bwd_step_kernel", sms=H100_SMS).cfg
    return (variant == "ONE_CHUNK") == (shape.B <= cfg.block_b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: compiling needs the real JIT functions", file=sys.stderr)
        return 2
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(compile_one, _jobs(args)))
    print(f"| {'kernel':38} | {'shape':24} | {'config (B,H,K,w)':17} | dtype | dot    | sm "
          f"| regs | spill | shared | {'MMA in SASS':11} | {'programs':12} | ok |")
    print("|" + "|".join("-" * w for w in (40, 26, 19, 7, 8, 4, 6, 7, 8, 13, 14, 4)) + "|")
    for r in rows:
        programs = f"{r['programs']} ({r['programs'] / H100_SMS:.0%})" if r["programs"] else "-"
        dtype = "fp32" if r["precision"] == "tf32" else r["precision"]
        dot = r["input_precision"] if dtype == "fp32" else "-"
        print(f"| {r['kernel']:38} | {r['shape']:24} | {str(r['cfg']):17} | {dtype:5} "
              f"| {dot:6} | {r['arch']} | {r['regs']:>4} | {r['spill']:>5} "
              f"| {r['shared']:>6} | {r['mma']:11} | {programs:>12} "
              f"| {', '.join(r['problems']) or 'ok'} |")
    bad = [r for r in rows if r["problems"]]
    print(f"{len(rows)} compiled, {len(bad)} failing (spills, shared memory over the limit, or "
          "an fp32/tf32/bf16/fp16 compile without tensor-core instructions)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
