# django-ray: `make demo` runs the demo, `make test` runs the test suite.
# Both create .venv with a Python >= 3.12 and install everything first.

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo admin test lint typecheck check bench bench-modes clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@PY=$$(scripts/find-python) && echo "Using $$PY" && "$$PY" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	cd testproject && ../$(BIN)/python manage.py run_demo

# The demo's admin with its styles: migrates, ensures the throwaway user demo/demo on the
# demo SQLite file, then serves (staticfiles' runserver --insecure serves the admin's CSS
# and JS with DEBUG = False; the demo settings add the app from DJANGO_RAY_EXTRA_APPS).
admin: setup
	cd testproject && ../$(BIN)/python manage.py run_demo --admin-user
	cd testproject && DJANGO_RAY_EXTRA_APPS=django.contrib.staticfiles \
		../$(BIN)/python manage.py runserver --insecure 127.0.0.1:8000

# Two test processes (pytest-xdist): each file runs whole in one of them, every RabbitMQ
# user in the same one; each process has its own database, Redis database and Ray.
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	PYTHONPATH=.:testproject $(BIN)/mypy django_ray compat

check: setup
	cd testproject && ../$(BIN)/python manage.py check
	cd testproject && ../$(BIN)/python manage.py makemigrations --check --dry-run

# The benchmark suite against Celery (docs/benchmarks.md); ARGS=--quick for a few minutes.
bench: setup
	$(BIN)/python benchmarks/suite.py $(ARGS)

clean:
	rm -rf $(VENV) testproject/*.sqlite3*
