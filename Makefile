# Two entry points for a fresh machine; both create (or reuse) one virtual environment.
#   make demo   - set up, then explain a bundled image with IBA (PNG + .npy in outputs/demo)
#   make test   - set up (the Fashion-MNIST data set included), then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FASHION := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test

$(STAMP): pyproject.toml setup.py requirements-torch.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-torch.txt
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m inputiba demo

# what some tests need from Debian (as root; otherwise install it yourself): the real data set the tests
# train and evaluate on, and a browser for the report's page test
data:
	@test -d $(FASHION) || apt-get install -y dataset-fashion-mnist || \
		echo "warning: could not install dataset-fashion-mnist; the tests that need it will be skipped"
	@command -v chromium > /dev/null || apt-get install -y chromium || \
		echo "warning: could not install chromium; the browser test of the report will be skipped"

test: setup data
	$(PY) -m ruff check --select F,E9 .
	$(PY) -m pytest
