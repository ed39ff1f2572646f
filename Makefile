# Two entry points: `make demo` (set up, then analyse the seed sentence on the bundled offline model)
# and `make test` (set up, then run the test suite). Setup is a local virtual environment in .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; an unpinned torch can pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
TEXT ?= Time flies like an arrow. Fruit flies like a banana.

.PHONY: setup demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet --editable ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/attention-encodings analyze "$(TEXT)" --model bundled

test: setup
	$(PY) -m pytest
