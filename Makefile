# Two commands on a fresh machine: `make bench` (the main job) and `make test`.
# Each creates .venv on first use; TORCH_SPEC and TRITON_SPEC pick what they install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.6.0

.PHONY: bench paper demo test gpu-check clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q --no-build-isolation -e ".[test,bench]"
	touch $@

bench: $(VENV)/.bench
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.plot

paper: $(VENV)/.bench
	$(PY) -m benchmarks.paper_fig1
	$(PY) -m examples.digits

demo: $(VENV)/.installed
	$(PY) examples/demo.py

test: $(VENV)/.installed
	$(VENV)/bin/ruff check bnlstm_cuda tests examples benchmarks tools
	env -u TRITON_INTERPRET $(PY) tools/triton_report.py
	$(PY) -m pytest -q tests

# On a lent GPU machine, with its own python3 (no venv, no network).
gpu-check:
	COMMIT=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) bash tools/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info
