# uswim_jax: every target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
LOCK   := requirements/lock.txt
ARGS   ?=
# The floor venv: the oldest jax (and its jaxlib) and numpy pyproject.toml allows
# (its ">=" bounds turned into "=="), pytest, and nothing else.
FLOOR_VENV := .venv-floor
FLOOR_PINS = $(shell $(PYTHON) -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb")); print(" ".join(r.replace(">=", "==") for r in d["project"]["dependencies"]))')

.PHONY: help install test test-all test-floor lock lint format reproduce-mnist \
	reproduce-fashion-mnist reproduce-cifar10 reproduce-tinyimagenet ablations bench \
	reproduce-devices \
	clean-venv

help:
	@echo "make reproduce-mnist   the 4-bit QLeNet (authors' rules) and the float LeNet on MNIST, one report with the per-chip study (the main job)"
	@echo "make reproduce-fashion-mnist   the same two models on the full Fashion-MNIST"
	@echo "make reproduce-cifar10 ConvNet and ResNet-18 on CIFAR-10 (GPU; ARGS=--quick on CPU)"
	@echo "make reproduce-tinyimagenet    ResNet-18 on Tiny ImageNet (GPU; ARGS=--quick on CPU)"
	@echo "make reproduce-devices selective write-verify on the PCM and RRAM presets over time (LeNet, MNIST and Fashion-MNIST; reuses their runs)"
	@echo "make ablations         the ablation tables on MNIST (LeNet, 4-bit LeNet, narrow ResNet-18; ~30 min on 2 cores)"
	@echo "make reproduce-uswim-scan  U-SWIM over SWIM on LeNet, s x sigma, both datasets (docs/studies.md; ARGS=--quick / --full)"
	@echo "make reproduce-deep    ResNet-18 (width 16) on padded mnist-10k and Fashion-MNIST, where the budget goes (docs/studies.md)"
	@echo "make reproduce-vit     the small ViT on mnist-10k and Fashion-MNIST, where the budget goes (docs/studies.md)"
	@echo "make test              the default test suite (not slow, not gpu)"
	@echo "make test-all          every test, slow ones included"
	@echo "make test-floor        the core alone on the oldest jax/numpy allowed (own venv)"
	@echo "make lock              rewrite requirements/lock.txt from .venv"
	@echo "make bench             side-by-side benchmarks (ARGS=--quick for a short run)"
	@echo "make lint              ruff check and format check"

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 -m "not slow and not gpu" $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -n 2 $(ARGS)

test-floor:
	@test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet $(FLOOR_PINS) pytest
	$(FLOOR_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(FLOOR_VENV)/bin/python -c 'import jax, numpy; print("floor: jax", jax.__version__, "numpy", numpy.__version__)'
	$(FLOOR_VENV)/bin/python -m pytest -p no:cacheprovider -q tests/core_only $(ARGS)

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -iv '^uswim' > $(LOCK)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

reproduce-mnist: $(STAMP)
	$(PY) -m experiments.mnist.main --results-dir results/reproduce-mnist --per-chip 0.5 $(ARGS)

reproduce-fashion-mnist: $(STAMP)
	$(PY) -m experiments.fashion_mnist.main --results-dir results/reproduce-fashion-mnist $(ARGS)

reproduce-cifar10: $(STAMP)
	$(PY) -m experiments.cifar10.main --results-dir results/reproduce-cifar10 $(ARGS)

reproduce-tinyimagenet: $(STAMP)
	$(PY) -m experiments.tinyimagenet.main --results-dir results/reproduce-tinyimagenet $(ARGS)

reproduce-devices: $(STAMP)
	$(PY) -m experiments.devices.main --results-dir results/reproduce-devices $(ARGS)

ablations: $(STAMP)
	$(PY) -m experiments.ablations.main --results-dir results/ablations $(ARGS)

.PHONY: reproduce-uswim-scan reproduce-deep reproduce-vit

reproduce-uswim-scan: $(STAMP)
	$(PY) -m experiments.uswim_scan.main --results-dir results/uswim-scan $(ARGS)

reproduce-deep: $(STAMP)
	$(PY) -m experiments.deep.main --results-dir results/deep $(ARGS)

reproduce-vit: $(STAMP)
	$(PY) -m experiments.vit.main --results-dir results/vit $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run $(ARGS)

clean-venv:
	rm -rf $(VENV) $(FLOOR_VENV)
