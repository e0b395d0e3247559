# The README's commands. Each creates .venv when missing and installs the pinned requirements.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 7866

.PHONY: run demo test test-fast lint typecheck pytest bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(PY) manage.py migrate --noinput
	@echo "Admin: http://$(HOST):$(PORT)/admin/ (no login yet? $(PY) manage.py createsuperuser)"
	$(PY) manage.py serve --host $(HOST) --port $(PORT)

demo: $(VENV)/.installed
	$(PY) manage.py migrate --noinput
	@echo "Admin: http://$(HOST):$(PORT)/admin/ (no login yet? $(PY) manage.py createsuperuser)"
	$(PY) manage.py serve --host $(HOST) --port $(PORT) --preset demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy .

pytest: $(VENV)/.installed
	$(VENV)/bin/pytest --durations=25

# The unit and in-process tiers only (no daphne subprocesses, browsers or clusters, and not the
# few long compile/bench/PostgreSQL re-runs marked slow), on two processes (pytest-xdist).
test-fast: $(VENV)/.installed
	$(VENV)/bin/pytest -m "not e2e and not slow" -n 2 --durations=15

test: lint typecheck pytest
