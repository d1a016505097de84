# vlab: make demo boots a terminal over NFS; make test runs every test, real boots included.
# Both install what they need first (Debian packages, a virtualenv with vlab in it).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VLAB := $(PY) -m vlab
DEMO ?= scenarios/tiny.toml

.PHONY: all deps demo test unit boot lint golden bench clean

all: test

deps: $(VENV)/.installed
	@scripts/install-deps.sh

$(VENV)/.installed: pyproject.toml scripts/install-deps.sh
	@scripts/install-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: deps
	@trap '$(VLAB) down $(DEMO)' EXIT; \
	$(VLAB) up $(DEMO) && \
	echo && echo "---- console of t1 (booted over NFS) ----" && \
	cat $$($(VLAB) status $(DEMO) --json | $(PY) -c 'import json,sys; print(json.load(sys.stdin)["terminals"][0]["console_log"])') && \
	echo && echo "---- vlab status ----" && $(VLAB) status $(DEMO)

test: deps
	$(PY) -m pytest

unit: deps
	$(PY) -m pytest -m "not boot"

boot: deps
	$(PY) -m pytest -m boot

lint: deps
	$(PY) -m ruff check vlab tests bench
	$(PY) -m mypy

golden: deps
	$(PY) -m pytest tests/test_render.py tests/test_pxe.py tests/test_xen.py -m "not boot" --regenerate
	git diff --stat -- tests/golden

bench: deps
	$(PY) bench/bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
