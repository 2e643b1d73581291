# Every target creates .venv when missing and installs the project (with its test tools) into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tailsampler demo

lint: $(STAMP)
	$(BIN)/ruff check sampler tests bench
	$(BIN)/mypy sampler

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/hotpath.py

clean:
	rm -rf $(VENV) build *.egg-info
