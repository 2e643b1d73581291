# Every target creates .venv when missing and installs the project (with its test tools) into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint browser bench bench-e2e bench-plot wheel fuzz clean

# The receive path is compiled by the package build (setup.py: Cython and mypyc); an editable install
# puts the extensions beside their sources, so editing a source must rebuild them.
$(STAMP): pyproject.toml setup.py sampler/otlp/_split.pyx sampler/otlp/splice.py sampler/otlp/jsonwire.py \
		$(wildcard sampler/pipeline/*.py sampler/pipeline/*.pyx sampler/policy/*.py)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The editable install compiles the receive path in place (setup.py). That needs the build
	# requirements (pyproject's [build-system]) in the venv and no build isolation: an isolated
	# editable build leaves the compiled modules where the package's imports never look.
	$(BIN)/python -m pip install --quiet 'setuptools>=77' wheel 'mypy>=1.10' 'Cython>=3.1'
	$(BIN)/python -m pip install --quiet --no-build-isolation -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tailsampler demo

lint: $(STAMP)
	$(BIN)/ruff check sampler tests bench
	$(BIN)/mypy sampler
	$(BIN)/lint-imports

# The admin UI's browser tests drive Debian's chromium through Playwright (whose own browser download
# cannot work offline): installed here when missing, as root (CI) or with passwordless sudo. Where that
# is impossible the browser tests skip, except under TAILSAMPLER_EXPECT_BROWSER=1 (CI), where they fail.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else \
	    echo "chromium is missing and cannot be installed without root: the browser tests will skip" >&2; exit 0; fi; \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "chromium is missing and there is no apt-get: the browser tests will skip" >&2; exit 0; fi; \
	  echo "installing chromium (apt-get) for the browser tests" >&2; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null; }

test: lint browser
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/hotpath.py --depth 500

bench-e2e: $(STAMP)
	$(BIN)/python bench/e2e.py

bench-plot: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-build-isolation -e '.[test,bench]'
	$(BIN)/python bench/e2e.py --plot bench/plots

wheel: $(STAMP)
	$(BIN)/python -m pip wheel --no-deps . -w dist

clean:
	rm -rf $(VENV) build dist *.egg-info *__mypyc*.so sampler/*/*.so sampler/otlp/_split.c sampler/pipeline/_*.c

# A long fuzz run (make test runs the same tests briefly); well over an hour at this size.
fuzz: $(STAMP)
	TAILSAMPLER_FUZZ_EXAMPLES=$${TAILSAMPLER_FUZZ_EXAMPLES:-20000} $(BIN)/pytest tests/test_fuzz.py -p no:cacheprovider -q --timeout 0
