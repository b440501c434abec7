"""Declaring tasks: names as Celery computes them, options, base classes, the registry."""

from __future__ import annotations

import types
from typing import Any

import pytest

from compat.celery import Celery, Task, shared_task
from compat.celery.exceptions import NotSupported
from django_ray import registry
from tests.compat import compat_tasks


def test_names_are_module_dot_function() -> None:
    assert compat_tasks.add.name == "tests.compat.compat_tasks.add"
    assert compat_tasks.whoami.name == "tests.compat.compat_tasks.whoami"


def test_name_option_overrides_the_computed_name() -> None:
    assert compat_tasks.named.name == "compat.custom_name"


def test_main_module_takes_the_app_main_as_celery_does() -> None:
    app = Celery("proj", set_as_current=False)
    fun = types.FunctionType((lambda: 1).__code__, {}, "job")
    fun.__module__ = "__main__"
    assert app.task(fun).name == "proj.job"


def test_every_task_is_registered_with_the_worker_registry() -> None:
    for task in (compat_tasks.add, compat_tasks.named, compat_tasks.whoami):
        entry = registry.resolve(task.name)
        assert entry.kind == "celery"
        assert entry.obj is task


def test_declaring_a_name_twice_returns_the_first_task() -> None:
    again = shared_task(name="tests.compat.compat_tasks.add")(lambda x, y: 0)
    assert again is compat_tasks.add


def test_plain_call_runs_the_function_directly() -> None:
    assert compat_tasks.add(2, 3) == 5
    info = compat_tasks.whoami()
    assert info["called_directly"] is True
    assert info["id"] is None


def test_bind_gives_the_task_as_self() -> None:
    assert compat_tasks.whoami()["name"] == compat_tasks.whoami.name


def test_base_class_hooks_and_attributes_are_inherited() -> None:
    task = compat_tasks.hooked
    assert isinstance(task, compat_tasks.RecordingTask)
    assert type(task).on_success is compat_tasks.RecordingTask.on_success


def test_decorator_options_become_attributes() -> None:
    task = compat_tasks.routed
    assert (task.queue, task.priority, task.time_limit, task.soft_time_limit) == (
        "other-queue",
        9,
        30,
        20,
    )
    retrying = compat_tasks.auto_retry
    assert retrying.autoretry_for == (compat_tasks.TransientError,)
    assert retrying.retry_kwargs == {"max_retries": 2, "countdown": 0}
    assert hasattr(retrying, "_orig_run")  # run() is wrapped, as Celery's autoretry does


def test_defaults_match_celery() -> None:
    task = compat_tasks.add
    assert task.max_retries == 3
    assert task.default_retry_delay == 180
    assert (task.retry_backoff, task.retry_backoff_max, task.retry_jitter) == (False, 600, True)
    assert task.typing is True


def test_config_backed_attributes_read_settings_when_read(settings: Any) -> None:
    assert compat_tasks.add.acks_late is False
    settings.CELERY_TASK_ACKS_LATE = True
    settings.CELERY_TASK_TIME_LIMIT = 60
    assert compat_tasks.add.acks_late is True
    assert compat_tasks.add.time_limit == 60
    assert compat_tasks.routed.time_limit == 30  # a declared value wins


def test_unknown_options_become_attributes_as_in_celery() -> None:
    task = shared_task(name="compat.test.custom_attr", custom_flag="yes")(lambda: None)
    assert task.custom_flag == "yes"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "option",
    [
        {"serializer": "pickle"},
        {"throws": (KeyError,)},
        {"reject_on_worker_lost": True},
        {"pydantic": True},
        {"exchange": "x"},
    ],
)
def test_unsupported_task_options_raise(option: dict[str, Any]) -> None:
    with pytest.raises(NotSupported, match=next(iter(option))):
        shared_task(name=f"compat.test.bad_{next(iter(option))}", **option)(lambda: None)


def test_unsupported_option_with_celerys_default_value_is_accepted() -> None:
    task = shared_task(name="compat.test.default_throws", throws=(), serializer="json")(lambda: 1)
    assert task() == 1


def test_class_based_task_registers_with_the_app() -> None:
    class Double(Task[[int], int]):
        name = "compat.test.double"

        def run(self, x: int) -> int:
            return 2 * x

    app = Celery("proj", set_as_current=False)
    task = app.register_task(Double())
    assert registry.resolve("compat.test.double").obj is task
    assert task(4) == 8
    assert app.tasks["compat.test.double"] is task


def test_app_refuses_a_broker_it_would_not_use() -> None:
    with pytest.raises(NotSupported, match="broker"):
        Celery("proj", broker="redis://localhost:6379/0", set_as_current=False)


def test_autodiscover_with_force_imports_the_tasks_modules() -> None:
    app = Celery("proj", set_as_current=False)
    app.autodiscover_tasks(["tests.compat"], related_name="compat_tasks", force=True)
    assert "tests.compat.compat_tasks.add" in app.tasks


def test_autodiscover_waits_until_tasks_are_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    monkeypatch.setattr("django_ray.registry.import_optional", imported.append)
    monkeypatch.setattr("django.apps.apps.ready", False)
    app = Celery("proj", set_as_current=False)
    app.autodiscover_tasks(lambda: ["pkg_a"])
    assert imported == []
    monkeypatch.setattr("django.apps.apps.ready", True)
    app.loader.import_default_modules()  # what django_ray.registry.autodiscover calls
    assert imported == ["pkg_a.tasks"]


def test_wrong_arguments_are_refused_before_sending() -> None:
    with pytest.raises(TypeError, match="add"):
        compat_tasks.add.delay(1, 2, 3)  # type: ignore[call-arg]


def test_rate_limit_is_accepted_but_said_to_be_unenforced() -> None:
    with pytest.warns(RuntimeWarning, match="rate_limit='10/m' is not enforced"):
        task = shared_task(name="compat.test.rate", rate_limit="10/m")(lambda: 1)
    assert task.rate_limit == "10/m"
    with pytest.raises(ValueError, match="rate_limit"):
        shared_task(name="compat.test.bad_rate", rate_limit="fast")(lambda: 1)
