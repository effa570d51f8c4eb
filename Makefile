# Two commands set everything up on a fresh machine:
#   make audit   install into .venv if needed, run the quickstart audit, print where the report is
#   make test    install (with test extras) if needed, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.reconaudit-installed
OUT    ?= runs/quickstart

.PHONY: audit test install lint bench clean-runs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,ray]'
	@touch $(STAMP)

install: $(STAMP)

audit: $(STAMP)
	$(VENV)/bin/reconaudit run quickstart --out $(OUT)

test: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/physics.py
	$(PY) benchmarks/fairness.py
	$(PY) benchmarks/recon.py

clean-runs:
	rm -rf runs
