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

.PHONY: setup demo test unit bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(STAMP)

## demo: train on synthetic scenes with 2 local Ray workers, register the model, print val mIoU
demo: setup
	@mkdir -p $(RAY_TMPDIR)
	$(PY) -m jobs.train $(ARGS)

## test: the whole suite: every test that starts no Ray on two processes (pytest-xdist),
## then the end-to-end runs on a real local Ray + sqlite MLflow, one cluster at a time
## (two on 2 cores time out starting). Both parts run; either failing fails the target,
## and a part that selects no test (pytest's exit code 5, say with ARGS="-k ...") is fine
## as long as the other ran some.
test: setup
	@status=0; ran=0; \
	for marker in "not ray" "ray"; do \
	  if [ "$$marker" = "ray" ]; then workers=""; else workers="-n 2"; fi; \
	  $(PY) -m pytest -m "$$marker" $$workers $(ARGS); code=$$?; \
	  if [ $$code -ne 5 ]; then ran=1; [ $$code -eq 0 ] || status=$$code; fi; \
	done; \
	[ $$ran -eq 1 ] || status=5; \
	exit $$status

## unit: the fast inner loop while changing code: every test that starts no Ray
unit: setup
	$(PY) -m pytest -m "not ray" -n 2 $(ARGS)

## bench: every cost benchmark in sequence (tables printed, raw JSON in bench/results/)
bench: setup
	$(PY) bench/run_cost.py $(ARGS)

clean:
	rm -rf .ray_tmp ray_results mlruns outputs .pytest_cache
