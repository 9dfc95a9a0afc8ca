# snnconv: every target runs inside .venv/ at the repo root (created by `make setup`).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: help setup demo test test-full lint bench clean-outputs

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-22s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv/ and install the project with its dev tools

demo: $(STAMP)  ## the main job on the embedded default (digits, ResNet-20, QCFS L=4, baseline), a few minutes on 2 CPU cores
	$(PY) run.py

test: $(STAMP)  ## the test suite (slow tests excluded)
	$(PY) -m pytest -q

test-full: $(STAMP)  ## every test, the slow ones included
	$(PY) -m pytest -q -m ''

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check src tests scripts run.py

bench: $(STAMP)  ## simulation speed: SNN(T=32) time / (32 x ANN time), per time_chunk
	$(PY) scripts/bench_simulation.py

clean-outputs:  ## delete run outputs (keeps the checkpoint cache)
	rm -rf outputs/20* multirun
