# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint data browser bench bench-env clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Real data comes from Debian packages, never from the network at run time:
# dataset-fashion-mnist (the image task's IDX files) and dict-freedict-eng-deu (the Ding
# dictionary the translation corpus is built from). Chromium renders the report in one test,
# so only `make test` installs it. apt-get runs through sudo when make is not run as root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DATA_PACKAGES := dataset-fashion-mnist dict-freedict-eng-deu
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -f /usr/share/dictd/freedict-eng-deu.dict.dz ]; then \
		echo "installing the Debian data packages: $(DATA_PACKAGES)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DATA_PACKAGES); \
	fi

browser:
	@if ! command -v chromium >/dev/null; then \
		echo "installing chromium (the report's rendering test only)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

demo: $(STAMP) data
	$(PY) -m sparsebench.demo

test: $(STAMP) data browser
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/training_step_cost.py

# The end-to-end benchmark's engines (ONNX Runtime, DeepSparse) in their own environment:
# deepsparse 1.8.0 pins numpy<2 and onnx 1.14.1, which must not reach .venv.
BENCH_VENV := .venv-bench
bench-env:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[bench]'

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
