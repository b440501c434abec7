"""The app: configuration read lazily from Django settings, current_app, control, states."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from compat.celery import Celery, current_app, states
from compat.celery.exceptions import ImproperlyConfigured, NotSupported
from compat.celery.local import get_current_app
from compat.celery.utils.log import get_task_logger


def test_conf_reads_the_namespaced_django_settings_when_read(settings: Any) -> None:
    app = Celery("proj", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    assert app.conf.task_always_eager is False and app.conf["task_default_queue"] == "celery"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CELERY_TASK_DEFAULT_QUEUE = "jobs"
    assert app.conf.task_always_eager is True and app.conf.task_default_queue == "jobs"


def test_values_set_on_conf_win(settings: Any) -> None:
    app = Celery(
        "proj", set_as_current=False, config_source="django.conf:settings", namespace="CELERY"
    )
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = False
    app.conf.update(task_eager_propagates=True)
    assert app.conf.task_always_eager is False and app.conf.task_eager_propagates is True


def test_conf_from_a_plain_object_without_namespace() -> None:
    class Config:
        task_default_queue = "lower"
        TASK_TIME_LIMIT = 9

    app = Celery("proj", set_as_current=False)
    app.config_from_object(Config)
    assert (app.conf.task_default_queue, app.conf.task_time_limit) == ("lower", 9)
    with pytest.raises(AttributeError, match="no_such_setting"):
        app.conf.no_such_setting  # noqa: B018


def test_broker_settings_belong_to_django_ray(settings: Any) -> None:
    app = Celery("proj", set_as_current=False)
    assert app.conf.broker_url == settings.DJANGO_RAY["BROKER_URL"]
    with pytest.raises(NotSupported, match="BROKER_URL"):
        app.conf.broker_url = "redis://elsewhere/0"


def test_a_wrong_config_path_is_a_configuration_error() -> None:
    app = Celery("proj", set_as_current=False)
    app.config_from_object("no_such_module:settings")
    with pytest.raises(ImproperlyConfigured, match="no_such_module"):
        app.conf.task_always_eager  # noqa: B018


def test_the_app_created_last_is_current() -> None:
    before = get_current_app()
    app = Celery("newest")
    try:
        assert current_app.main == "newest" and get_current_app() is app
    finally:
        before.set_current()


def test_default_app_reads_celery_settings(settings: Any) -> None:
    settings.CELERY_TASK_DEFAULT_QUEUE = "from-settings"
    assert current_app.conf.task_default_queue == "from-settings"


def test_control_provides_revoke_only() -> None:
    app = Celery("proj", set_as_current=False)
    with pytest.raises(NotSupported, match="inspect"):
        app.control.inspect()


def test_states_match_celery() -> None:
    assert {"SUCCESS", "FAILURE", "REVOKED"} == states.READY_STATES
    assert {"FAILURE", "REVOKED"} == states.PROPAGATE_STATES
    assert states.state(states.PENDING) < states.state(states.SUCCESS)
    assert states.state("PROGRESS") > states.state(states.STARTED)


def test_get_task_logger_is_a_child_of_celery_task() -> None:
    logger = get_task_logger("some.tasks.module")
    assert isinstance(logger, logging.Logger) and logger.parent is logging.getLogger("celery.task")


def test_importable_and_usable_before_django_is_set_up() -> None:
    # A project's celery.py is imported from its package __init__, before django.setup().
    import subprocess
    import sys
    import textwrap

    from tests.conftest import worker_env

    script = textwrap.dedent(
        """
        from compat.celery import Celery, shared_task

        app = Celery("proj")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.autodiscover_tasks()

        @app.task
        def job():
            return 1

        @shared_task(bind=True)
        def other(self):
            return 2

        from django.apps import apps
        assert not apps.ready
        print(job.name, other.name)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["proj.job", "proj.other"]
