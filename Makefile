# The habits of this project. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
# Debian packages the interop tests talk to (real third-party peers), and the tools the
# tutorials and lab sheets run (strace; ss and ip from iproute2).
TEST_DEBS = socat ncat gcc haproxy strace iproute2
LINT_DIRS = $(wildcard src tests benchmarks examples)


.PHONY: run dev test lint typecheck unit test-deps bench clean catalogs

# Two installs: `make run` needs only what sockecho needs to run (RUN_STAMP); the test tools
# (pytest, mypy, ruff, matplotlib, uvloop...) come with `make test` (STAMP); `make dev` does both.
RUN_STAMP = $(VENV)/.run-stamp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)  ## start the default server (asyncio model on 127.0.0.1:50010)
	$(BIN)/sockecho serve

dev: $(STAMP) test-deps  ## install everything (sockecho, the test tools, the Debian peers); run nothing

# Installs the Debian peers when possible (root); in CI missing tools fail the tests.
test-deps: $(STAMP)
	@missing=""; for tool in socat ncat gcc haproxy strace ss; do PATH="$$PATH:/usr/sbin:/sbin" command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_DEBS) >/dev/null) \
	      || { echo "could not install:$$missing" >&2; exit 1; }; \
	  else \
	    echo "warning: not installed:$$missing (interop tests will skip; CI fails them)" >&2; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

unit: $(STAMP)
	$(BIN)/pytest

test: test-deps lint typecheck unit  ## everything CI runs

# Not part of `make test`: minutes of load (docs/PERFORMANCE.md). BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	PYTHON=$(BIN)/python benchmarks/run $(BENCH_ARGS)

# The message catalogs of --trace and the connection log (src/sockecho/i18n.py): extract the
# messages into sockecho.pot, merge them into each language's .po, compile the .mo files.
LOCALE = src/sockecho/locale
catalogs: $(STAMP)
	$(BIN)/pybabel extract -k N_ -k ngettext:1,2 -k counted:1,2 -k _ --no-location \
	  -w 300 -o $(LOCALE)/sockecho.pot src/sockecho
	$(BIN)/pybabel update -i $(LOCALE)/sockecho.pot -d $(LOCALE) -D sockecho -w 100 \
	  --no-fuzzy-matching
	$(BIN)/pybabel compile -d $(LOCALE) -D sockecho --statistics

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist src/*.egg-info
