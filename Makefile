# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint data bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Real data comes from Debian packages, never from the network at run time; Chromium renders
# the report in its test.
DEBIAN_PACKAGES := dataset-fashion-mnist dict-freedict-eng-deu chromium
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -f /usr/share/dictd/freedict-eng-deu.dict.dz ] \
		|| ! command -v chromium >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES); \
	fi

demo: $(STAMP) data
	$(PY) -m sparsebench.demo

test: $(STAMP) data
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/training_step_cost.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
