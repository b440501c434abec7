"""The preflight's judgement, difference by difference (the Ray runs are in
tests/runners/test_preflight.py): what breaks tasks is an error, what may is a warning."""

from __future__ import annotations

from typing import Any

import pytest

from django_ray.runtime.preflight import compare, describe_process

pytestmark = pytest.mark.django_db  # the description includes whether the database answers


@pytest.fixture
def worker() -> dict[str, Any]:
    return describe_process()  # this process, set up as the worker is


def test_the_same_project_passes(worker: dict[str, Any]) -> None:
    report = compare(worker, dict(worker))
    assert report.ok and report.errors == [] and report.warnings == []
    assert "sees the same project" in report.text()


def test_a_process_that_cannot_be_set_up_is_an_error(worker: dict[str, Any]) -> None:
    report = compare(worker, {"setup_error": "No module named 'shop'", "node": "n2"})
    assert not report.ok
    assert "could not set the project up: No module named 'shop'" in report.errors[0]
    assert "RAY_ENV_VARS" in report.errors[0] and "working_dir" in report.errors[0]


def test_a_database_the_cluster_cannot_reach_is_an_error(worker: dict[str, Any]) -> None:
    cluster = {**worker, "unreachable_databases": {"default": "OperationalError: refused"}}
    report = compare(worker, cluster)
    assert not report.ok
    assert "cannot reach database 'default' (OperationalError: refused)" in report.errors[0]


def test_another_database_is_an_error(worker: dict[str, Any]) -> None:
    other = {"default": {"engine": "django.db.backends.sqlite3", "name": "/elsewhere.sqlite3"}}
    report = compare(worker, {**worker, "databases": other})
    assert [e for e in report.errors if e.startswith("Databases differ")]
    assert "/elsewhere.sqlite3" in report.text()


def test_missing_apps_and_tasks_are_errors_and_extras_warnings(worker: dict[str, Any]) -> None:
    cluster = {
        **worker,
        "installed_apps": [*worker["installed_apps"][1:], "extra_app"],
        "tasks": worker["tasks"][1:],
        "settings_module": "other.settings",
    }
    report = compare(worker, cluster)
    text = report.text()
    assert worker["installed_apps"][0] in text and worker["tasks"][0] in text
    assert any(e.startswith("Settings module differs") for e in report.errors)
    assert any("extra_app" in w for w in report.warnings)
    assert len(report.errors) == 3


def test_other_versions_are_warnings(worker: dict[str, Any]) -> None:
    report = compare(worker, {**worker, "python": "3.13.0", "django": "6.2"})
    assert report.ok
    assert len(report.warnings) == 2


def test_no_credentials_are_described(worker: dict[str, Any], settings: Any) -> None:
    settings.DATABASES = {
        **settings.DATABASES,
        "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", "PASSWORD": "s3cret"},
    }
    assert "s3cret" not in repr(describe_process())
