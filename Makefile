# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv in the project root. torch==2.13.0 is installed before the
# extras that need it so pip takes the local CPU build (an unpinned torch would
# pull a multi-GB CUDA build). Serving needs no torch.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: install install-dev demo test lint format clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# serving + clients only (what the Docker image has): no torch. The client SDK
# (client/, its own distribution) first: the package depends on it.
$(VENV)/.base-installed: pyproject.toml client/pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e ./client
	$(PIP) install -e .
	touch $@

# everything: training (torch CPU build first), tests and lint
$(VENV)/.dev-installed: pyproject.toml client/pyproject.toml | $(VENV)/bin/python
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -e ./client
	$(PIP) install -e '.[train,dev]'
	touch $(VENV)/.base-installed $@

install: $(VENV)/.base-installed
install-dev: $(VENV)/.dev-installed

demo: $(VENV)/.base-installed
	$(VENV)/bin/s2loop demo

test: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.dev-installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
