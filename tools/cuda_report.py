"""Compile the C++ extension's CUDA kernels (csrc/bnlstm_*.cu) for sm_90 without a GPU, with the
flags the build passes, and report per kernel and dtype: registers, spills, local memory, static
shared memory and tensor-core instructions; then the blocks each launch takes at the benchmark's
GPU shapes (benchmarks/shapes.py) on an H100.

Kernels are found in the cubins (every entry function ptxas compiles). Per row: registers and
spill bytes from ptxas -v, STACK and LOCAL bytes from cuobjdump --dump-resource-usage, LDL/STL
(local memory loads and stores) and HMMA/HGMMA (tensor-core MMA) counted in the SASS.
The launches are the C++'s own plans: tools/persistent_plan.cpp runs plan_persistent_fwd and
plan_persistent_bwd (and where they refuse, the per-step plan_step_fwd and plan_step_bwd) against
an H100 of 132 SMs, with the occupancy from NVIDIA's calculator and the kernel's registers from
the cubin; other kernels get "?".

Exit status: 0 when every row passes; 1 when a row spills (ptxas spill bytes, STACK, LOCAL or an
LDL/STL) or a kernel that must use tensor cores has no HMMA/HGMMA (every float32, bf16 and fp16
kernel: float32 multiplies in TF32, once or as tf32x3; float64 stays on DFMA); 2 when a tool
(nvcc, cuobjdump, c++filt, g++) is missing or fails.
`python tools/cuda_report.py` (CUDA_HOME: the toolkit, /usr/local/cuda by default).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the repository root: benchmarks/ (the GPU shapes) and setup.py (the nvcc flags) are not
# installed, and `python tools/cuda_report.py` puts only tools/ on the path
sys.path.insert(0, ROOT)

CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")
ARCH = 90
H100_SMS = 132
DTYPES = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
TENSOR_CORE_DTYPES = ("f32", "f16", "bf16")
ENTRY = re.compile(r"Compiling entry function '([^']+)'")
SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")
RESOURCES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)", re.M)
MMA_SASS = re.compile(r"\b(HMMA|HGMMA)\.")  # not HFMA2.MMA: a half FMA on the MMA pipe
LOCAL_SASS = re.compile(r"\b(LDL|STL)\b")


class ToolError(Exception):
    """A compiler or disassembler the report needs is not installed, or failed."""


def parse_ptxas(text: str) -> dict[str, dict]:
    """Per entry function (mangled): registers, stack frame, spill stores and loads and static
    shared memory bytes, from ptxas -v's lines (device functions' lines are skipped)."""
    kernels, current = {}, None
    for line in text.splitlines():
        if m := ENTRY.search(line):
            current = kernels.setdefault(m.group(1), {"smem": 0})
        elif m := re.search(r"Function properties for (\S+)", line):
            current = kernels.get(m.group(1))  # None: a device function's, skipped
        elif current is not None and (m := SPILLS.search(line)):
            current.update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif current is not None and (m := USED.search(line)):
            current.update(regs=int(m[1]), smem=int(m[2] or 0))
    return kernels


def parse_resources(text: str) -> dict[str, dict]:
    """Per function: REG, STACK, SHARED (with the driver's reserved 1 KB on sm_90) and LOCAL
    bytes from cuobjdump --dump-resource-usage."""
    return {m[1]: dict(zip(("REG", "STACK", "SHARED", "LOCAL"), map(int, m.groups()[1:])))
            for m in RESOURCES.finditer(text)}


def parse_sass(text: str) -> dict[str, dict]:
    """Per function: its tensor-core MMA instructions and local memory loads and stores, counted
    in cuobjdump -sass."""
    parts = SASS_FUNCTION.split(text)[1:]  # name, body, name, body, ...
    return {name: {"mma": len(MMA_SASS.findall(body)), "ldl_stl": len(LOCAL_SASS.findall(body))}
            for name, body in zip(parts[::2], parts[1::2])}


def needs_tensor_cores(dtype: str) -> bool:
    """float32 (TF32), bf16 and fp16 kernels must use the tensor cores (sm_90 builds)."""
    return dtype in TENSOR_CORE_DTYPES


def problems(row: dict) -> list[str]:
    """What fails in a row: any spill or local memory, or no tensor cores where required."""
    found = []
    if row["spill"] or row["stack"] or row["local"] or row["ldl_stl"]:
        found.append("spills / local memory")
    if needs_tensor_cores(row["dtype"]) and not row["mma"]:
        found.append("no tensor cores")
    return found


def short_name(demangled: str) -> str:
    """'bnlstm::fwd_step_kernel<__half>' of 'void bnlstm::fwd_step_kernel<__half>(...)'."""
    return re.sub(r"^void ", "", demangled.split("(")[0])


def base_name(kernel: str) -> str:
    """'fwd_step_kernel' of 'bnlstm::fwd_step_kernel<__half>': the launch geometry's key."""
    return kernel.split("<")[0].split("::")[-1]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)
    except FileNotFoundError as error:
        raise ToolError(f"{command[0]} is not installed") from error
    except subprocess.CalledProcessError as error:
        raise ToolError(f"{' '.join(command)} failed:\n{error.stdout}{error.stderr}") from error


def _tool(name: str) -> str:
    """The toolkit's own, else Triton's copy (its wheel ships cuobjdump), else PATH's."""
    for path in (os.path.join(CUDA_HOME, "bin", name), _triton_bin(name)):
        if path and os.path.exists(path):
            return path
    if found := shutil.which(name):
        return found
    raise ToolError(f"{name} is not installed (CUDA_HOME={CUDA_HOME})")


def _triton_bin(name: str) -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def nvcc_flags() -> list[str]:
    """What the build passes nvcc for one architecture: torch's common flags, setup.py's, the
    C++ standard BuildExtension adds, and sm_90 (the CI build's CI_CUDA_ARCHS=9.0)."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    from setup import NVCC_FLAGS

    return [*COMMON_NVCC_FLAGS, *NVCC_FLAGS, "-std=c++20",
            f"-gencode=arch=compute_{ARCH},code=sm_{ARCH}"]


def dtype_of(source: str) -> str:
    """'f16' of csrc/bnlstm_f16.cu: the instantiation file's suffix."""
    return os.path.splitext(os.path.basename(source))[0].rsplit("_", 1)[-1]


def compile_source(source: str, flags: list[str], out_dir: str) -> list[dict]:
    """Compile one .cu to a cubin and return its kernels' rows."""
    cubin = os.path.join(out_dir, os.path.basename(source) + ".cubin")
    ptxas = _run([_tool("nvcc"), "-cubin", *flags, source, "-o", cubin])
    cuobjdump = _tool("cuobjdump")
    resources = parse_resources(_run([cuobjdump, "--dump-resource-usage", cubin]).stdout)
    sass = parse_sass(_run([cuobjdump, "-sass", cubin]).stdout)
    kernels = parse_ptxas(ptxas.stdout + ptxas.stderr)
    names = _run(["c++filt"], input="\n".join(kernels)).stdout.split("\n")
    dtype = dtype_of(source)
    return [dict(kernel=short_name(demangled), dtype=dtype, regs=k["regs"],
                 spill=k["spill_stores"] + k["spill_loads"], stack=resources[name]["STACK"],
                 local=resources[name]["LOCAL"], smem=k["smem"], **sass[name])
            for name, demangled, k in zip(kernels, names, kernels.values())]


def build_planner(out_dir: str) -> str:
    """tools/persistent_plan.cpp built by the host compiler, as the CPU emulation builds the
    kernel templates (libcu++ from the toolkit's cccl headers)."""
    include = os.path.join(CUDA_HOME, "include")
    exe = os.path.join(out_dir, "persistent_plan")
    _run([os.environ.get("CXX", "g++"), "-std=c++17", "-O1", "-Wno-unknown-pragmas", "-I", include,
          "-I", os.path.join(include, "cccl"), os.path.join(ROOT, "tools", "persistent_plan.cpp"),
          "-o", exe])
    return exe


PERSISTENT = {"persistent_fwd_kernel": "fwd", "persistent_bwd_kernel": "bwd"}  # the planner's


def launches(planner: str, rows: list[dict], hidden_sizes: list[int]) -> dict:
    """{(dtype, H): {kernel base name or "fwd path" / "bwd path": what the launch takes}}: each
    kernel's persistent plan, or where that refuses its launch per step."""
    result = {}
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        for kernel, which in PERSISTENT.items():
            persistent = [r for r in rows
                          if r["dtype"] == dtype and base_name(r["kernel"]) == kernel]
            if not persistent:
                continue
            out = _run([planner, which, dtype, str(persistent[0]["regs"]),
                        str(persistent[0]["smem"]), *map(str, hidden_sizes)]).stdout
            for line in out.splitlines():
                H, ok, units, blocks, threads, shared, per_sm, *why = line.split(" ", 7)
                plan = (f"{blocks} x {threads}, U={units}, {shared} B, {per_sm}/SM" if ok == "1"
                        else f"{blocks} x {threads} per step, U={units}, {shared} B")
                path = (f"persistent ({blocks} <= {per_sm} x {H100_SMS})" if ok == "1"
                        else f"per-step: {why[0]}")
                result.setdefault((dtype, int(H)), {}).update(
                    {kernel: plan, f"{which} path": path})
    return result


def print_kernels(rows: list[dict]):
    print(f"| {'kernel (sm_90)':44} | dtype | regs | spill | stack | local | LDL/STL "
          f"| smem  | HMMA+HGMMA | ok |")
    print("|" + "|".join("-" * w for w in (46, 7, 6, 7, 7, 7, 9, 7, 12, 4)) + "|")
    for r in rows:
        print(f"| {r['kernel']:44} | {r['dtype']:5} | {r['regs']:>4} | {r['spill']:>5} "
              f"| {r['stack']:>5} | {r['local']:>5} | {r['ldl_stl']:>7} | {r['smem']:>5} "
              f"| {r['mma']:>10} | {', '.join(r['problems']) or 'ok'} |")


def print_launches(rows: list[dict], plans: dict, shapes):
    kernels = list(dict.fromkeys(base_name(r["kernel"]) for r in rows))
    print(f"\nBlocks per launch (blocks x threads) on an H100 ({H100_SMS} SMs), as planned by "
          "plan_persistent_fwd and plan_persistent_bwd (U units per block, dynamic shared memory, "
          "blocks per SM), or where they refuse, per step by plan_step_fwd and plan_step_bwd:")
    print(f"| {'shapes':38} | H    | dtype | " + " | ".join(f"{k:40}" for k in kernels)
          + f" | {'forward path':65} | {'backward path':65} |")
    print("|" + "|".join("-" * w for w in (40, 6, 7, *(42,) * len(kernels), 67, 67)) + "|")
    for H in dict.fromkeys(s.hidden_size for s in shapes):
        for dtype in dict.fromkeys(r["dtype"] for r in rows):
            labels = ", ".join(s.label for s in shapes if s.hidden_size == H
                               and DTYPES[str(s.dtype).removeprefix("torch.")] == dtype)
            here = {base_name(r["kernel"]) for r in rows if r["dtype"] == dtype}
            plan = plans.get((dtype, H), {})
            cells = [plan.get(k, "?") if k in here else "-" for k in kernels]
            print(f"| {labels:38} | {H:4} | {dtype:5} | " + " | ".join(f"{c:40}" for c in cells)
                  + f" | {plan.get('fwd path', '?'):65} | {plan.get('bwd path', '?'):65} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+",
                        default=sorted(glob.glob(os.path.join(ROOT, "csrc", "bnlstm_*.cu"))),
                        help="the .cu files (dtype: the name's last _ part); default: csrc's")
    parser.add_argument("--jobs", type=int, default=2, help="compiles at once")
    args = parser.parse_args()
    from benchmarks.shapes import GPU_DEFAULT

    try:
        flags = nvcc_flags()
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
            planner = pool.submit(build_planner, tmp)
            rows = sorted((row for rows in pool.map(lambda s: compile_source(s, flags, tmp),
                                                    args.sources) for row in rows),
                          key=lambda r: (r["dtype"], r["kernel"]))
            plans = launches(planner.result(), rows,
                             list(dict.fromkeys(s.hidden_size for s in GPU_DEFAULT)))
    except ToolError as error:
        print(f"cuda_report: {error}", file=sys.stderr)
        return 2
    for r in rows:
        r["problems"] = problems(r)
    print_kernels(rows)
    print_launches(rows, plans, GPU_DEFAULT)
    bad = [r for r in rows if r["problems"]]
    print(f"\n{len(rows)} kernels, {len(bad)} failing (spills or local memory, or an "
          "fp32/bf16/fp16 kernel without tensor-core instructions)")
    for r in bad:
        print(f"FAIL {r['kernel']} ({r['dtype']}): {', '.join(r['problems'])}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
