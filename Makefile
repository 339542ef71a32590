# uswim_jax: every target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: help install test test-all lint format reproduce-mnist \
	reproduce-fashion-mnist reproduce-cifar10 reproduce-tinyimagenet ablations bench \
	clean-venv

help:
	@echo "make reproduce-mnist   train LeNet on MNIST and report (the main job)"
	@echo "make reproduce-fashion-mnist   the same on the full Fashion-MNIST (~30 min CPU)"
	@echo "make reproduce-cifar10 ConvNet and ResNet-18 on CIFAR-10 (GPU; ARGS=--quick on CPU)"
	@echo "make reproduce-tinyimagenet    ResNet-18 on Tiny ImageNet (GPU; ARGS=--quick on CPU)"
	@echo "make ablations         the ablation tables on MNIST (LeNet, 4-bit LeNet, narrow ResNet-18; ~30 min on 2 cores)"
	@echo "make test              the default test suite (not slow, not gpu)"
	@echo "make test-all          every test, slow ones included"
	@echo "make bench             side-by-side benchmarks (ARGS=--quick for a short run)"
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

reproduce-fashion-mnist: $(STAMP)
	$(PY) -m experiments.fashion_mnist.main --results-dir results/reproduce-fashion-mnist $(ARGS)

reproduce-cifar10: $(STAMP)
	$(PY) -m experiments.cifar10.main --results-dir results/reproduce-cifar10 $(ARGS)

reproduce-tinyimagenet: $(STAMP)
	$(PY) -m experiments.tinyimagenet.main --results-dir results/reproduce-tinyimagenet $(ARGS)

ablations: $(STAMP)
	$(PY) -m experiments.ablations.main --results-dir results/ablations $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run $(ARGS)

clean-venv:
	rm -rf $(VENV)
