# Flowsite: `make run` serves the demo on http://localhost:3000; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 3000

.PHONY: run install install-dev migrate test test-unit lint worker bench clean

$(VENV)/.base: requirements/base.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/base.txt
	touch $@

$(VENV)/.dev: $(VENV)/.base requirements/dev.txt
	$(PY) -m pip install -q -r requirements/dev.txt
	touch $@

install: $(VENV)/.base

install-dev: $(VENV)/.dev

migrate: install
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py setup_demo

## Install, migrate, create the demo chatflow and admin, serve on http://localhost:$(PORT).
run: migrate
	$(PY) manage.py runserver --insecure 0.0.0.0:$(PORT)

## A queue-mode worker (MODE=queue and Redis required).
worker: install
	MODE=queue $(PY) manage.py rqworker

## Install everything and run the whole test suite (starts Redis/PostgreSQL if none answers).
test: install-dev
	scripts/test.sh

test-unit: install-dev
	$(VENV)/bin/pytest tests/unit -q

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install-dev
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
