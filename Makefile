# django-ray: `make demo` runs the demo, `make test` runs the test suite.
# Both create .venv with a Python >= 3.12 and install everything first.

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck check bench bench-modes clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@PY=$$(scripts/find-python) && echo "Using $$PY" && "$$PY" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	cd testproject && ../$(BIN)/python manage.py run_demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	PYTHONPATH=.:testproject $(BIN)/mypy django_ray compat

check: setup
	cd testproject && ../$(BIN)/python manage.py check
	cd testproject && ../$(BIN)/python manage.py makemigrations --check --dry-run

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) testproject/*.sqlite3*
