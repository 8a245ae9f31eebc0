# Everything runs from a local virtual environment; `make test` and `make demo` set it up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch, pinned. Where no NVIDIA driver is found and PyTorch's CPU wheel index can be reached, it is
# added, so pip takes the CPU build (the package index's default build carries CUDA: several GB); with
# a driver, the default build. Override either: `make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126`,
# `make setup TORCH_INDEX=` (the package index alone), `make setup TORCH=torch`.
TORCH ?= torch==2.13.0
TORCHVISION ?= torchvision==0.28.0
CPU_INDEX := https://download.pytorch.org/whl/cpu
# The CPU index is probed once (5 s): where it cannot be reached, pip is not sent there to retry for
# minutes with a warning each time; the package index alone serves (its torch build carries CUDA).
ifeq ($(origin TORCH_INDEX), undefined)
TORCH_INDEX := $(if $(shell command -v nvidia-smi 2>/dev/null),,$(shell $(PYTHON) -c \
	"import urllib.request as r; r.urlopen('$(CPU_INDEX)/torch/', timeout=5)" >/dev/null 2>&1 && echo $(CPU_INDEX)))
endif

.PHONY: setup setup-zoo lint test test-fast test-zoo demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

test: setup lint
	$(BIN)/python -m pytest -q

# ruff (lint) over everything, mypy (types) over the library; both configured in pyproject.toml
lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy

# The tests marked zoo (spandrel's architectures, LPIPS) in an environment of their own: spandrel and
# lpips need torchvision built for the installed torch, and the package index's pair (torch +
# torchvision, CUDA builds, about 5 GB) is the one that is always to be had. Local wheel folders in
# pip's configuration (a CPU torch) are left out here, so that the pair matches.
ZOO_VENV ?= .venv-zoo

$(ZOO_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(ZOO_VENV)
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(ZOO_VENV)/bin/pip install --quiet "$(TORCH)" "$(TORCHVISION)" -e ".[zoo]" lpips pytest httpx2
	touch $@

setup-zoo: $(ZOO_VENV)/.installed

test-zoo: setup-zoo
	$(ZOO_VENV)/bin/python -c "import spandrel, lpips"  # fails loudly, never a silent skip
	$(ZOO_VENV)/bin/python -m pytest -q -m zoo

test-fast: setup lint
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/medsr upscale examples -o out/demo/general --model realesrgan-x4plus --overwrite
	$(BIN)/medsr upscale examples -o out/demo/medical --overwrite
	$(BIN)/python examples/make_figure.py examples/fundus_hrf_01_h_lr.png out/demo/general/fundus_hrf_01_h_lr.png \
		out/demo/medical/fundus_hrf_01_h_lr.png --labels "Real-ESRGAN x4plus,medsr retina-fidelity" \
		--box 80,40,48,48 -o out/demo/comparison-fundus.png
	$(BIN)/python examples/make_figure.py examples/cxr_00000404_000_lr.png out/demo/general/cxr_00000404_000_lr.png \
		out/demo/medical/cxr_00000404_000_lr.png --labels "Real-ESRGAN x4plus,medsr cxr-fidelity" \
		--box 60,40,64,64 -o out/demo/comparison-cxr.png

bench: setup
	$(BIN)/python benchmarks/bench_upscale.py

clean:
	rm -rf $(VENV) $(ZOO_VENV) out
