"""System checks: misconfiguration reported with stable ids and a hint that states the fix."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.tasks import task_backends
from django.test import modify_settings, override_settings

from django_ray.checks import check_backend, check_settings

pytestmark = pytest.mark.django_db  # Django's model checks ask the database for JSON support

BACKEND = "django_ray.backend.RayTaskBackend"


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [m.id for m in messages]


def all_messages() -> list[checks.CheckMessage]:
    return [m for m in checks.run_checks() if (m.id or "").startswith("django_ray.")]


def assert_well_formed(messages: list[checks.CheckMessage]) -> None:
    for message in messages:
        # Errors stop manage.py; W ids are warnings (the setting is ignored, not fatal).
        expected = checks.Warning if message.id.split(".")[1].startswith("W") else checks.Error
        assert type(message) is expected, message
        assert message.hint, message
        assert message.msg.endswith("."), message


def test_the_test_settings_are_clean() -> None:
    assert task_backends["default"].check() == []
    assert check_settings() == []
    assert all_messages() == []
    call_command("check")


def test_backend_check_runs_through_djangos_checks() -> None:
    tasks_setting = {"default": {"BACKEND": BACKEND, "OPTIONS": {"TASK_OPTIONS": {"a.b": 2}}}}
    with override_settings(TASKS=tasks_setting):
        assert ids(all_messages()) == ["django_ray.E002"]
        with pytest.raises(SystemCheckError, match=r"django_ray\.E002"):
            call_command("check")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"OPTIONS": {"TASK_OPTIONS": {"a.b": 2}}}, ["django_ray.E002"]),
        ({"OPTIONS": {"TASK_OPTIONS": ["a.b"]}}, ["django_ray.E002"]),
        ({"OPTIONS": {"TASK_OPTIONS": {"a.b": {"max_retries": 3}}}}, ["django_ray.W004"]),
        ({"QUEUES": ["default", ""]}, ["django_ray.E003"]),
        ({"QUEUES": [3]}, ["django_ray.E003"]),
        ({"QUEUES": ["default", "high"], "OPTIONS": {"TASK_OPTIONS": {"a.b": {}}}}, []),
    ],
)
def test_backend_misconfiguration(params: dict[str, Any], expected: list[str]) -> None:
    with override_settings(TASKS={"default": {"BACKEND": BACKEND, **params}}):
        messages = task_backends["default"].check()
    assert ids(messages) == expected
    assert_well_formed(messages)


def test_backend_needs_the_app_installed() -> None:
    backend = task_backends["default"]
    with modify_settings(INSTALLED_APPS={"remove": ["django_ray"]}):
        messages = check_backend(backend)
    assert ids(messages) == ["django_ray.E001"]
    assert "INSTALLED_APPS" in messages[0].hint
    assert check_backend(backend) == []


def test_without_the_app_enqueue_and_get_result_name_the_fix() -> None:
    from django_ray.exceptions import ImproperlyConfiguredRay
    from tests import tasks

    with modify_settings(INSTALLED_APPS={"remove": ["django_ray"]}):
        with pytest.raises(ImproperlyConfiguredRay, match="add 'django_ray' to INSTALLED_APPS"):
            tasks.add.enqueue(1, 2)
        with pytest.raises(ImproperlyConfiguredRay, match="INSTALLED_APPS"):
            tasks.add.get_result("00000000-0000-0000-0000-000000000000")


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("not a dict", ["django_ray.E010"]),
        ({"BROKER_URL": "django://", "BROKR_URL": "x"}, ["django_ray.E011"]),
        ({"BROKER_URL": "kafka://host"}, ["django_ray.E012"]),
        ({"BROKER_URL": "localhost:6379"}, ["django_ray.E012"]),
        ({"TASK_MODULES": "myproject.jobs"}, ["django_ray.E013"]),
        ({"VISIBILITY_TIMEOUT": 0}, ["django_ray.E014"]),
        ({"VISIBILITY_TIMEOUT": "1h"}, ["django_ray.E014"]),
        ({"BROKER_URL": "redis://127.0.0.1:6379/0", "VISIBILITY_TIMEOUT": 60}, []),
    ],
)
def test_settings_misconfiguration(setting: Any, expected: list[str]) -> None:
    with override_settings(DJANGO_RAY=setting):
        messages = check_settings()
        assert ids(all_messages()) == expected  # registered with Django's checks
    assert ids(messages) == expected
    assert_well_formed(messages)


def test_broker_password_is_not_shown() -> None:
    with override_settings(DJANGO_RAY={"BROKER_URL": "kafka://user:s3cret@host"}):
        (message,) = check_settings()
    assert "s3cret" not in message.msg


@pytest.mark.parametrize("enabled, mode", [(True, "wal"), (False, "delete")])
def test_a_sqlite_file_opens_in_wal_mode_unless_turned_off(
    settings: Any, tmp_path: Any, enabled: bool, mode: str
) -> None:
    from django.db.backends.sqlite3.base import DatabaseWrapper

    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "SQLITE_WAL": enabled}
    wrapper = DatabaseWrapper({**connection.settings_dict, "NAME": str(tmp_path / "x.sqlite3"),
                               "OPTIONS": {}})  # fmt: skip
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == mode
            cursor.execute("PRAGMA busy_timeout")
            assert cursor.fetchone()[0] == (30000 if enabled else 5000)
    finally:
        wrapper.close()
