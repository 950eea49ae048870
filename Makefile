# Two entry points for a fresh machine; both create (or reuse) one virtual environment.
#   make demo   - set up, then explain a bundled image with IBA (PNG + .npy in outputs/demo)
#   make test   - set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test

$(STAMP): pyproject.toml setup.py requirements-torch.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-torch.txt
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m inputiba demo

test: setup
	$(PY) -m ruff check --select F,E9 .
	$(PY) -m pytest
