"""Real services the tests use, and how a test asks for one.

A test that needs a service calls ``require_redis()`` (etc.): on a laptop without the
service it skips with a reason; under ``CI=true`` it fails, because CI must provide it.
"""

from __future__ import annotations

import os
import socket

import pytest

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_HOST = ("127.0.0.1", 5432)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    reason = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must provide it.")
    pytest.skip(reason)


def require_redis() -> str:
    require("Redis", "127.0.0.1", 6379)
    return REDIS_URL


def require_rabbitmq() -> str:
    require("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL


def require_postgres() -> None:
    require("PostgreSQL", *POSTGRES_HOST)


# Parametrise a test over every broker the project supports (use with the broker_url fixture).
ALL_BROKERS = pytest.mark.parametrize(
    "broker_url",
    [
        "django",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=pytest.mark.rabbitmq),
    ],
    indirect=True,
)
