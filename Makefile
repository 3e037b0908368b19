# Two commands for a fresh machine:
#   make demo   set up .venv and scan the built-in example LoRA (offline, no arguments)
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch first, pinned to the CPU build this machine keeps on disk: a plain `torch`
# requirement would otherwise pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $@

demo: setup
	$(BIN)/lora-scan

test: setup
	$(BIN)/python -m pytest -n 2 -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python scripts/bench_spectra.py
	$(BIN)/python scripts/bench_estimators.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
