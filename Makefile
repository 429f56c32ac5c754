# The two commands a newcomer needs:
#   make demo   set up, pretrain on Fashion-MNIST (CPU preset, or the GPU preset when CUDA is
#               present), evaluate, print what was learned and where its pictures are
#   make test   set up, run the test suite
# Options: PYTHON=python3.11  DATA_DIR=/path/to/fashion-mnist  ARGS="--epochs 10"

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

.PHONY: demo test install data clean

install: $(STAMP)

# pip -qq: errors only (a machine's pip config can add a warning per package, e.g. for
# missing find-links folders); --no-compile: pip's .pyc pass runs on one core, so COMPILE
# byte-compiles the venv afterwards on all of them. Without .pyc files (where
# PYTHONDONTWRITEBYTECODE is set, as on this project's CI machines) every process that
# imports torch and torchvision compiles them again: 17-19 s instead of 7 on a 2-core AVX2 CPU.
# Its exit status is not checked: a few files no Python 3.11 program imports (torch's test
# helpers for Python 3.12 syntax) do not compile, and a file left out only imports slower.
PIP := $(BIN)/python -m pip install -qq --disable-pip-version-check --no-compile
COMPILE := $(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true

# fastclr builds one C file (its CPU augmentation kernel) when a C compiler and Python's
# headers are there; without them it installs anyway and says so.
$(STAMP): pyproject.toml requirements.txt setup.py fastclr/augment/_cpu.c
	@echo "setting up $(VENV): the pinned environment of requirements.txt, then fastclr"
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps --no-build-isolation -e .
	$(COMPILE)
	@$(BIN)/python -c "import fastclr.augment as A; A.NATIVE or print('note: the C kernel of \
	fastclr.augment was not built (install gcc and the Python headers, e.g. apt-get install \
	gcc python3-dev, then make clean install); CPU augmentation will be several times slower')"
	touch $(STAMP)

# Fashion-MNIST from Debian's package when we can install it; otherwise fastclr looks in
# DATA_DIR or downloads it where a network exists, and says how to get it when neither works.
data:
	@if [ -n "$(DATA_DIR)" ] || [ -d $(FMNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "note: $(FMNIST) is missing and apt-get needs root; fastclr will try DATA_DIR or a download"; fi

# fastclr train ends with the evaluation table and the paths of the pictures it drew
demo: install data
	@start=$$(date +%s); \
	preset=$$($(BIN)/python -c "import torch; print('fashion-mnist-resnet18' if torch.cuda.is_available() else 'fashion-mnist-cpu')"); \
	echo "pretraining with preset $$preset"; \
	$(BIN)/fastclr train --config $$preset --download true $(DATA_FLAG) $(ARGS) || exit $$?; \
	echo "demo: $$(( $$(date +%s) - start )) s of pretraining and evaluation"

# the test suite also runs the optional extras' tests (export to ONNX and timm, Lightning,
# UMAP): the dev extra's pins from pyproject.toml, installed once into the same venv
DEV_STAMP := $(VENV)/.dev-installed
$(DEV_STAMP): $(STAMP) pyproject.toml
	@echo "adding the test suite's pinned extras (pyproject.toml [dev]) to $(VENV)"
	@$(BIN)/python -c "import tomllib; print('\\n'.join(tomllib.load(open('pyproject.toml', \
	'rb'))['project']['optional-dependencies']['dev']))" > $(VENV)/dev-requirements.txt
	$(PIP) -r $(VENV)/dev-requirements.txt
	$(COMPILE)
	touch $(DEV_STAMP)

# the tests run one torch thread each (tests/conftest.py): one pytest worker per core, a test
# file to a worker (its module-scoped fixtures made once); TEST_WORKERS=1 runs them in turn
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
test: install data $(DEV_STAMP)
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; exit 1; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) runs
