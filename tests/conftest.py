"""Shared fixtures: settings per broker, and a worker run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent

# `make test` runs two test processes (pytest-xdist). Each has its own SQLite file
# (pytest-django adds the worker id) and its own Redis database, so Celery's fixed names
# (the "celery" queue, the control fanout) never meet; set before any test module reads it.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _XDIST_WORKER.startswith("gw") and "TEST_REDIS_URL" not in os.environ:
    os.environ["TEST_REDIS_URL"] = f"redis://127.0.0.1:6379/{7 + int(_XDIST_WORKER[2:])}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup``: each file runs whole in one process, and every file that
    uses RabbitMQ in the same one (one virtual host: Celery's control broadcasts there reach
    every worker listening, so two such tests must not overlap)."""
    rabbit_files = {item.path for item in items if item.get_closest_marker("rabbitmq")}
    for item in items:
        if item.path in rabbit_files:
            group = "rabbitmq"
        elif item.get_closest_marker("spread"):  # a long test that may run on its own
            group = item.nodeid
        else:
            group = str(item.path.relative_to(ROOT))
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True, scope="session")
def _register_test_tasks() -> None:
    # The worker finds test tasks through TASK_MODULES, as a project lists its own.
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "TASK_MODULES": ["tests.tasks"]}


def worker_env(**extra: str) -> dict[str, str]:
    """Environment for a worker subprocess that shares this test session's database."""
    env = dict(os.environ)
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        env["DJANGO_RAY_DB_NAME"] = str(db["NAME"])
    else:
        env["DJANGO_RAY_DB"] = "postgres"
        env["DJANGO_RAY_PG_NAME"] = str(db["NAME"])
    env["DJANGO_RAY_BROKER"] = settings.DJANGO_RAY["BROKER_URL"]
    env["DJANGO_RAY_TASK_MODULES"] = "tests.tasks"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "testproject")])
    env.update(extra)
    return env


def worker_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "testproject" / "manage.py"), "django_ray_worker", *args]


def run_worker(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``django_ray_worker`` to completion (use --batch or --max-tasks)."""
    return subprocess.run(
        worker_command(*args), env=worker_env(**env), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Point DJANGO_RAY at the broker named by the test's parameter (default django://)."""
    from tests.services import require_rabbitmq, require_redis

    kind = getattr(request, "param", "django")
    url = {"django": lambda: "django://", "redis": require_redis, "amqp": require_rabbitmq}[kind]()
    old = settings.DJANGO_RAY
    settings.DJANGO_RAY = {**old, "BROKER_URL": url}
    yield url
    settings.DJANGO_RAY = old


@pytest.fixture
def queue(broker_url: str) -> Iterator[str]:
    """Return a queue name unique to this test; delete it from the test's broker afterwards."""
    from uuid import uuid4

    from django_ray.transport import Broker

    name = f"t-{uuid4().hex[:10]}"
    yield name
    broker = Broker(broker_url)
    try:
        channel = broker.connection.default_channel
        channel.queue_delete(name)
        if broker.kind == "amqp":
            channel.exchange_delete(name)
    except Exception:  # never declared, or the service went away: nothing to clean
        pass
    finally:
        broker.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Any]:
    """A redis-server of this test's own, which it may stop and start (tests/private_redis.py)."""
    from tests.private_redis import redis_server

    yield from redis_server(tmp_path)
