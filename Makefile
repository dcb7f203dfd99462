# Two commands on a fresh machine: `make bench` (the main job) and `make test`.
# Each creates .venv on first use (TORCH_SPEC and TRITON_SPEC pick what it installs) and builds
# the C++ extension's CPU kernels there. `make test` also builds the extension with its CUDA
# kernels in .venv-cuda (the CUDA build of torch, no GPU needed) and runs its CPU-side tests
# there; `make gpu-build` builds it on the GPU machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.6.0
CUDA_VENV ?= .venv-cuda
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_TORCH_SPEC ?= torch==2.14.1
CUDA_HOME ?= /usr/local/cuda
CI_CUDA_ARCHS ?= 9.0
EXT_LOG := build/ext-build.log
CPU_EXT_LOG := build/cpu-ext-build.log

.PHONY: bench paper demo char-lm test build-ext gpu-build gpu-check clean

# The package and its dependencies; the extension is built by the next rule (an editable
# install keeps the built module in bnlstm_cuda/, so reinstalling without a build keeps it).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	BNLSTM_SKIP_BUILD=1 $(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

# The C++ extension with its CPU kernels, rebuilt whenever a source changes.
$(VENV)/.ext-built: $(VENV)/.installed setup.py $(wildcard csrc/*)
	mkdir -p build
	MAX_JOBS=2 $(PY) -m pip install -v --no-build-isolation --no-deps -e . > $(CPU_EXT_LOG) 2>&1 \
	  || { grep -v "^WARNING: Location" $(CPU_EXT_LOG) | tail -n 80; exit 1; }
	$(PY) -c "import bnlstm_cuda._C, torch; print('bnlstm_cuda._C:', torch.ops.bnlstm.forward_loop)"
	touch $@

$(VENV)/.bench: $(VENV)/.installed
	BNLSTM_SKIP_BUILD=1 $(PY) -m pip install -q --no-build-isolation -e ".[test,bench]"
	touch $@

bench: $(VENV)/.bench $(VENV)/.ext-built
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.plot

paper: $(VENV)/.bench $(VENV)/.ext-built
	$(PY) -m benchmarks.paper_fig1
	$(PY) -m examples.digits --seeds 3 --epochs 40

$(CUDA_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q "$(CUDA_TORCH_SPEC)" "pytest>=7" "numpy<2.4" ninja
	touch $@

# The toolkit here lacks cuBLAS/cuSPARSE headers: take the CUDA 13 wheels' (shared/CUDA_BUILD.md).
# Rebuilt whenever a source changes; pip builds in a fresh directory, so every kernel's ptxas
# report (registers, spills) is in the log each time. Installed into the venv, not in place: the
# source tree's bnlstm_cuda/_C*.so is .venv's CPU build, so this venv imports and tests its own
# copy (python -I and the pytest script keep the source tree off sys.path).
$(CUDA_VENV)/.ext-built: $(CUDA_VENV)/.installed setup.py $(wildcard csrc/*)
	mkdir -p build
	NV=$$($(CUDA_PY) -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13'))") && \
	  CUDA_HOME=$(CUDA_HOME) CPATH=$$NV/include LIBRARY_PATH=$$NV/lib \
	  BNLSTM_CUDA_ARCHS="$(CI_CUDA_ARCHS)" MAX_JOBS=2 \
	  $(CUDA_PY) -m pip install -v --no-build-isolation --no-deps . > $(EXT_LOG) 2>&1 \
	  || { grep -v "^WARNING: Location" $(EXT_LOG) | tail -n 80; exit 1; }
	$(CUDA_PY) -I -c "import bnlstm_cuda._C, torch; print('bnlstm_cuda._C:', torch.ops.bnlstm.forward_loop)"
	touch $@

build-ext: $(CUDA_VENV)/.ext-built
	@echo "ptxas report of the extension's CUDA kernels (sm $(CI_CUDA_ARCHS); full log in $(EXT_LOG)):"
	@grep -E "Compiling entry function|registers|spill stores" $(EXT_LOG) \
	  | sed -E "s/.*Compiling entry function '([^']*)' for '([^']*)'/\1 \2/; s/^ +//" | c++filt

test: $(VENV)/.ext-built build-ext
	$(VENV)/bin/ruff check bnlstm_cuda tests examples benchmarks tools setup.py
	env -u TRITON_INTERPRET $(PY) tools/triton_report.py
	env -u TRITON_INTERPRET CUDA_HOME=$(CUDA_HOME) $(PY) tools/cuda_report.py
	CUDA_HOME=$(CUDA_HOME) $(PY) -m pytest -q tests
	$(CUDA_VENV)/bin/pytest -q -p no:logging tests/test_cpp_ext.py

# The CUDA kernels run on the CPU (csrc/emulation/, tests/test_emulation.py): the GPU contract,
# the persistent and per-step forward, three block orders, ThreadSanitizer, the watchdogs.
# Needs the toolkit's headers, no GPU; `make test` runs it with the rest of tests/.
emulate: $(VENV)/.installed
	CUDA_HOME=$(CUDA_HOME) $(PY) -m pytest -q tests/test_emulation.py

demo: $(VENV)/.ext-built
	$(PY) examples/demo.py

# The character-level language model (examples/char_lm.py); its text comes from Debian's
# bible-kjv-text package, read by the bible program (apt-get install bible-kjv, as root).
char-lm: $(VENV)/.bench $(VENV)/.ext-built
	@command -v bible > /dev/null || { echo "char-lm needs the bible program: apt-get install bible-kjv"; exit 1; }
	$(PY) -m examples.char_lm

# On the GPU machine (its own python3 with torch, nvcc, ninja; no internet). Then:
# BNLSTM_TEST_DEVICE=cuda python3 -m pytest tests/test_cpp_ext.py
gpu-build:
	MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e .

# On a lent GPU machine, with its own python3 (no venv, no network).
gpu-check:
	COMMIT=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) bash tools/gpu_check.sh

clean:
	rm -rf $(VENV) $(CUDA_VENV) build *.egg-info bnlstm_cuda/_C*.so
