#!/usr/bin/env bash
# The prepared GPU check, for a lent GPU machine (its own python3 with torch, triton, nvcc):
# build the extension, check every backend (bnlstm_cuda.info), run the GPU tests and the benchmark.
# Each stage has a time limit; the limits add up to 480 s (510 where gdb exists), so the whole
# check stays near 8 minutes and a rerun fits in a 15-minute lease. Logs and the CSV go to OUT (default
# benchmarks/results/gpu).
# Usage from the repository root: COMMIT=<sha> [SKIP='info tune'] bash tools/gpu_check.sh [OUT]
set -uo pipefail
OUT=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$OUT"
export BNLSTM_TEST_DEVICE=cuda

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  commit: ${COMMIT:-unknown}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"

stage() {  # stage NAME SECONDS COMMAND...: run with a limit, log to OUT/NAME.log (OUT/$LOG.log
  # where LOG is set: stages can share a file, as at most 8 come back), say how it went
  local name=$1 limit=$2 log="$OUT/${LOG:-$1}.log"
  shift 2
  if [[ " ${SKIP:-} " == *" $name "* ]]; then
    echo "$name: skipped (SKIP)" | tee -a "$OUT/env.txt"
    return 0
  fi
  local start=$SECONDS
  echo "=== $name: $*" >> "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/env.txt"
  return 0
}

# the CUDA kernels for this GPU's architecture only: half the compile time of the default two
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1)
stage build 90 env MAX_JOBS=16 BNLSTM_CUDA_ARCHS="$ARCH" \
  python3 -m pip install --no-build-isolation --no-deps -e .
# first, in seconds: versions, and each backend against the reference in every dtype on this GPU
# (the Triton kernels it compiles stay cached for the tests)
stage info 45 python3 -m bnlstm_cuda.info
# most telling first: the small contract cases (their messages come back even if the large
# ones run out of time), the large ones, then the extension's and the small oracle checks on
# the GPU; a process per stage, so a crash leaves the others' results; failures one line each
LOG=tests stage tests_small 40 python3 -m pytest -q -rs --tb=line tests/test_triton_gpu.py \
  -k "B5-H24 or B33-H40 or graph"
LOG=tests stage tests_large 75 python3 -m pytest -q -rs --tb=line --durations=5 \
  tests/test_triton_gpu.py -k "not (B5-H24 or B33-H40 or graph)"
LOG=tests stage tests_cpp 45 python3 -m pytest -v -rs --tb=line tests/test_cpp_ext.py
if command -v gdb > /dev/null; then  # the C++ frames of the argument check that segfaulted
  LOG=tests stage segv 30 gdb -batch -ex run -ex bt --args python3 -m pytest -q -x \
    tests/test_cpp_ext.py -k "argument_checks"
fi
LOG=tests stage tests_triton 35 python3 -m pytest -q -rs --tb=line tests/test_triton.py
# the paper-sized and published shapes against cuDNN and the eager BN loop (the references'
# Python loops only check, at seconds per call)
stage bench 130 python3 -m benchmarks.run --device cuda --budget-ms 100 \
  --providers bnlstm nn.LSTM "eager BN loop" flashrnn --csv "$OUT/results.csv"
# which tiles pick_config should choose at the target shape (fp32, bf16)
stage tune 20 python3 -m benchmarks.tune --budget-ms 60

echo "--- info"
[[ -f "$OUT/info.log" ]] && cat "$OUT/info.log"
echo "--- tests (stages, failures, summaries)"
grep -E "^===|^(FAILED|ERROR)|Error: |Fatal|passed|failed" "$OUT/tests.log" | cut -c1-300 \
  | tail -n 40
echo "--- tile sweep"
tail -n 24 "$OUT/tune.log"
echo "--- benchmark (tail)"
tail -n 45 "$OUT/bench.log"
