# skintune: `make demo` and `make test` each create .venv (once) and install the project first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STORAGE ?= results

.PHONY: venv demo test test-fast lint bench clean

venv: $(STAMP)

# Reinstall only when pyproject.toml changes; the project itself is installed editable.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/skintune demo --storage $(STORAGE)

# ruff, then mypy over tuner/, trainables/ and search_spaces/ (configured in pyproject.toml's [tool.mypy])
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

# the tests that need no Ray cluster (not marked `ray`): about 2.5 min on 2 cores
test-fast: venv
	$(BIN)/python -m pytest -q -m "not ray"

bench: venv
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
