# Two commands on a fresh machine: `make demo` and `make test` (both set up .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Ray and MLflow write only inside this folder, and report nothing home.
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_TMPDIR ?= $(CURDIR)/.ray_tmp

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(STAMP)

## demo: train on synthetic scenes with 2 local Ray workers, register the model, print val mIoU
demo: setup
	@mkdir -p $(RAY_TMPDIR)
	$(PY) -m jobs.train $(ARGS)

## test: the whole suite (unit tests, then end-to-end runs on a real local Ray + sqlite MLflow)
test: setup
	$(PY) -m pytest $(ARGS)

## bench: every cost benchmark in sequence (tables printed, raw JSON in bench/results/)
bench: setup
	$(PY) bench/run_cost.py $(ARGS)

clean:
	rm -rf .ray_tmp ray_results mlruns outputs .pytest_cache
