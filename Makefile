# Two entry points: `make run` (the backend on its embedded defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
LS_VENV ?= .venv-ls
LS_VERSION ?= 1.23.2
PORT ?= 9090
WORDNET_DIR ?= /usr/share/wordnet
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-faults setup setup-ls setup-browser setup-fashion-mnist screenshots bench clean

run: setup
	$(VENV)/bin/labelloop serve --port $(PORT)

test: setup setup-ls setup-browser setup-fashion-mnist
	LABEL_STUDIO_BIN=$(abspath $(LS_VENV))/bin/label-studio $(VENV)/bin/python -m pytest

# The load / fault / multi-worker suite alone (real serve processes on loopback, a few minutes; also in `make test`).
# The full-disk test mounts a 2 MB tmpfs when run as root with CAP_SYS_ADMIN, else injects ENOSPC.
test-faults: setup
	$(VENV)/bin/python -m pytest -m faults -q

setup: $(VENV)/.installed $(WORDNET_DIR)/data.noun

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -e '.[test,bench,ray,onnx]'
	touch $@

# WordNet 3.0 dictionary files (Debian wordnet-base): the ImageNet zero-shot prior maps label names through them.
$(WORDNET_DIR)/data.noun:
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends wordnet-base

# Fashion-MNIST (Debian dataset-fashion-mnist, MIT): an object set of the relabel scene benchmark
# (python -m benchmarks.bench_relabel --objects fashion-mnist); `make test` installs it for its tests.
setup-fashion-mnist: $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz

$(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz:
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends dataset-fashion-mnist

# Label Studio pins many packages, so it lives in a venv of its own (used by the end-to-end tests).
setup-ls: $(LS_VENV)/.installed

$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --upgrade pip
	$(LS_VENV)/bin/pip install 'label-studio==$(LS_VERSION)'
	touch $@

# Headless Chromium for the browser e2e test and `make screenshots` (Debian packages; apt-get as root, else sudo).
BROWSER_PACKAGES ?= chromium chromium-driver
setup-browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	  echo "setup-browser: install $(BROWSER_PACKAGES) (apt-get, as root)" >&2; exit 1; fi; \
	$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES)

# The README walkthrough's pictures (docs/images/*.png), taken from the e2e Label Studio in headless Chromium.
screenshots: setup setup-ls setup-browser
	LABEL_STUDIO_BIN=$(abspath $(LS_VENV))/bin/label-studio $(VENV)/bin/python -m scripts.screenshots --out docs/images

# Each benchmark rewrites its own section of benchmarks/RESULTS.md (slow: several hours on 2 cores).
bench: setup
	$(VENV)/bin/python -m benchmarks.bench_speed --write
	$(VENV)/bin/python -m benchmarks.bench_active_learning --seeds 10 --write
	$(VENV)/bin/python -m benchmarks.bench_trainers  # prints tables; paste into its RESULTS.md section
	$(VENV)/bin/python -m benchmarks.bench_vlm --write
	$(VENV)/bin/python -m benchmarks.bench_backend --write
	$(VENV)/bin/python -m benchmarks.bench_zero_shot_prior --seeds 20 --budgets 10,20,100,500 --write
	$(VENV)/bin/python -m benchmarks.bench_cold_start --seeds 10 --write
	$(VENV)/bin/python -m benchmarks.bench_audit --train-per-class 1000 --test-per-class 200 --seeds 2
	$(VENV)/bin/python -m benchmarks.bench_cl_matrices --per-class 2000 --seeds 1 2 --write
	$(VENV)/bin/python -m benchmarks.bench_similarity --n 1000000 --dim 512 --clusters 1000 --queries 1000 --threads 1 --write
	$(VENV)/bin/python -m benchmarks.bench_relabel --scenes 500 --seeds 2 --holdout 300 --test 300 --noise 0.0 --num-crops 6 --px 96

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache
