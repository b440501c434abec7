"""The backend, the django:// transport and the worker on PostgreSQL, for real.

The settings choose the database from ``DJANGO_RAY_DB`` when the process starts, so this
test runs those test modules again in a pytest subprocess with ``DJANGO_RAY_DB=postgres``
(its own throw-away test database). There, ``SELECT ... FOR UPDATE SKIP LOCKED`` is used
and tested (``test_postgres_skips_rows_locked_by_another_consumer``), ``jsonb`` stores the
records, and worker subprocesses share the database over the network.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from django.db import connection

from tests.conftest import ROOT
from tests.services import require_postgres

MODULES = [
    "tests/test_backend.py",
    "tests/test_django_transport.py",
    "tests/test_models.py",
    "tests/test_restarts.py",
    "tests/test_signals.py",
    "tests/test_worker.py",
    "tests/test_worker_process.py",
]


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(360)
@pytest.mark.skipif(connection.vendor == "postgresql", reason="this run is on PostgreSQL already")
def test_core_suite_on_postgresql() -> None:
    require_postgres()
    env = {
        **os.environ,
        "DJANGO_RAY_DB": "postgres",
        "DJANGO_RAY_PG_TEST_NAME": f"test_django_ray_{os.getpid()}",
    }
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", *MODULES, "-v", "-p", "no:cacheprovider",
               "--create-db", "-k", "not redis and not amqp and not rabbitmq",
               "--timeout=90"]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=350, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    for name in ("test_postgres_skips_rows_locked_by_another_consumer",
                 "test_postgresql_restarted_mid_run",
                 "test_a_kept_connection_the_server_ended_is_dropped_before_use"):  # fmt: skip
        assert re.search(rf"{name}\S* PASSED", output), output[-3000:]
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
