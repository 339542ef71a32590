# uswim_jax: every target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: help install test test-all lint format reproduce-mnist clean-venv

help:
	@echo "make reproduce-mnist   train LeNet on MNIST and report (the main job)"
	@echo "make test              the default test suite (not slow, not gpu)"
	@echo "make test-all          every test, slow ones included"
	@echo "make lint              ruff check and format check"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow and not gpu" $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -n 2 $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

reproduce-mnist: $(STAMP)
	$(PY) -m experiments.mnist.main --results-dir results/reproduce-mnist $(ARGS)

clean-venv:
	rm -rf $(VENV)
