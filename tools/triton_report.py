"""Compile every Triton kernel configuration the launcher can pick for sm_80 and sm_90, without
a GPU, and report registers, spills, shared memory and tensor-core instructions.

Exits non-zero on local-memory spills or shared memory over the chip's limit, so CI catches what
the interpreter cannot. Run with TRITON_INTERPRET unset: `python tools/triton_report.py`.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # max dynamic shared memory per block
DTYPES = ("fp32", "bf16", "fp16", "fp64")
IO_POINTERS = {"x_ptr", "w_ih_ptr", "xw_ptr", "y_ptr", "w_hh_ptr", "gamma_ih_ptr",
               "gamma_hh_ptr", "bias_ptr", "gamma_c_ptr", "beta_c_ptr",
               "dy_ptr"}  # the layer's dtype; the rest accumulate


def _signature(fn, constexprs, dtype, acc):
    """Each argument typed as the launcher types it: tensors by dtype, an annotated scalar by its
    annotation (factor, eps: fp64), any other int i32."""
    sig = {}
    for param in fn.params:
        if param.name in constexprs:
            sig[param.name] = "constexpr"
        elif param.name.endswith("_ptr"):  # running stats: fp32+
            sig[param.name] = f"*{dtype}" if param.name in IO_POINTERS else f"*{acc}"
        else:
            sig[param.name] = param.annotation_type or "i32"
    return sig


def compile_one(job):
    """Compile one (kernel, variant, config, dtype, arch); return a report row."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bnlstm_cuda.backends import triton_step

    kernel_name, variant, cfg, dtype, arch = job
    fn = getattr(triton_step, kernel_name)
    acc = "fp64" if dtype == "fp64" else "fp32"
    constexprs = dict(USE_BATCH=True, UPCAST_DOT=False, INPUT_PRECISION="ieee",
                      ACC=getattr(tl, "float64" if acc == "fp64" else "float32"),
                      BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k)
    if variant:
        constexprs[variant] = True
    # the forward's switches: a bias (read only with FUSED_INPUT), the others off by default
    for flag, value in (("HAS_BIAS", True), ("FUSED_INPUT", False), ("FACTOR_IN_MEMORY", False)):
        if flag in inspect.signature(fn.fn).parameters:
            constexprs.setdefault(flag, value)
    src = ASTSource(fn=fn, signature=_signature(fn, constexprs, dtype, acc),
                    constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=cfg.num_warps))
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "--dump-resource-usage",
                                f.name], capture_output=True, text=True, check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    local = int(re.search(r"LOCAL:(\d+)", usage).group(1))
    ptx = compiled.asm["ptx"]
    mma = "wgmma" if "wgmma" in ptx else ("mma" if "mma.sync" in ptx else "none")
    shared = compiled.metadata.shared
    ok = local == 0 and shared <= SHARED_LIMIT[arch]
    name = kernel_name + (f"+{variant}" if variant else "")
    return (name, tuple(cfg), dtype, arch, regs, local, shared, mma, ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES))
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: compiling needs the real JIT functions", file=sys.stderr)
        return 2
    from bnlstm_cuda.backends import triton_step

    kernels = (("_fwd_step_kernel", None), ("_fwd_step_kernel", "FUSED_INPUT"),
               ("_bwd_step_kernel", None))
    jobs = [(name, variant, *rest) for (name, variant), *rest in
            itertools.product(kernels, triton_step.CONFIGS, args.dtype, args.arch)]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(compile_one, jobs))
    print(f"{'kernel':30} {'config (B,H,K,warps)':22} {'dtype':5} {'sm':>3} {'regs':>5} "
          f"{'local':>6} {'shared':>7} {'mma':>6}  ok")
    for kernel, cfg, dtype, arch, regs, local, shared, mma, ok in rows:
        print(f"{kernel:30} {str(cfg):22} {dtype:5} {arch:>3} {regs:>5} {local:>6} {shared:>7} "
              f"{mma:>6}  {'yes' if ok else 'NO'}")
    bad = [r for r in rows if not r[-1]]
    print(f"{len(rows)} compiled, {len(bad)} over a limit (local-memory spills or shared memory)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
