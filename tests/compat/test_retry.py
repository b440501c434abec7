"""Task.retry() and autoretry_for, as the worker runs them (push_request, run, pop_request)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from compat.celery import Task, current_task, shared_task
from compat.celery.exceptions import MaxRetriesExceededError, NotSupported, Retry
from compat.celery.retry import backoff
from django_ray.message import TaskMessage
from tests.compat import compat_tasks
from tests.compat.compat_tasks import TransientError


def message_for(task: Task[Any, Any], *args: Any, retries: int = 0, **fields: Any) -> TaskMessage:
    return TaskMessage(
        id="tid",
        task=task.name,
        args=args,
        retries=retries,
        queue="q",
        root_id="root",
        priority=30,
        chain=({"task": "next"},),
        **fields,
    )


@contextmanager
def running(task: Task[Any, Any], message: TaskMessage, **extra: Any) -> Iterator[None]:
    """Push a request as the worker does: Celery's fields, plus the message itself."""
    task.push_request(
        id=message.id,
        args=list(message.args),
        kwargs=dict(message.kwargs),
        retries=message.retries,
        root_id=message.root_id,
        is_eager=False,
        message=message,
        **extra,
    )
    try:
        yield
    finally:
        task.pop_request()


def test_retry_raises_retry_carrying_the_next_message() -> None:
    task = compat_tasks.retry_until
    message = message_for(task, 5)
    before = timezone.now()
    with running(task, message), pytest.raises(Retry) as caught:
        task.run(5)
    retry = caught.value
    assert isinstance(retry.message, TaskMessage)
    nxt = retry.message
    assert (nxt.id, nxt.task, nxt.args, nxt.retries) == ("tid", task.name, (5,), 1)
    assert (nxt.queue, nxt.priority, nxt.root_id, nxt.chain) == ("q", 30, "root", message.chain)
    assert nxt.eta is not None and before <= nxt.eta <= timezone.now() + timedelta(seconds=1)
    assert retry.when == 0  # the task's default_retry_delay
    assert isinstance(retry.exc, TransientError)
    assert retry.sig is not None and retry.sig.id == "tid"


def test_countdown_defaults_to_default_retry_delay() -> None:
    task = compat_tasks.add
    with running(task, message_for(task, 1, 2)), pytest.raises(Retry) as caught:
        task.retry()
    assert caught.value.when == 180
    assert caught.value.message.eta - timezone.now() > timedelta(seconds=170)  # type: ignore[union-attr]


def test_eta_args_and_options() -> None:
    task = compat_tasks.add
    eta = datetime(2031, 1, 1, tzinfo=UTC)
    with running(task, message_for(task, 1, 2)), pytest.raises(Retry) as caught:
        task.retry(args=(3, 4), eta=eta, queue="retries", headers={"x-why": "test"})
    nxt = caught.value.message
    assert nxt is not None
    assert (nxt.args, nxt.eta, nxt.queue, dict(nxt.headers)) == (
        (3, 4),
        eta,
        "retries",
        {"x-why": "test"},
    )
    assert caught.value.when == eta


def test_past_max_retries_raises_exc() -> None:
    task = compat_tasks.retry_until
    with (
        running(task, message_for(task, 9, retries=3)),
        pytest.raises(TransientError, match="attempt 3"),
    ):
        task.run(9)


def test_past_max_retries_without_exc_raises_max_retries_exceeded() -> None:
    task = compat_tasks.add
    with (
        running(task, message_for(task, 1, 2, retries=1)),
        pytest.raises(MaxRetriesExceededError) as caught,
    ):
        task.retry(max_retries=1, countdown=0)
    assert caught.value.task_args == [1, 2]


def test_max_retries_none_retries_forever() -> None:
    task = shared_task(bind=True, max_retries=None, name="compat.test.forever")(
        lambda self: self.retry()
    )
    with running(task, message_for(task, retries=1000)), pytest.raises(Retry):
        task.run()


def test_called_directly_reraises_instead_of_retrying() -> None:
    with pytest.raises(TransientError):
        compat_tasks.retry_until(1)


def test_throw_false_is_refused() -> None:
    task = compat_tasks.add
    with running(task, message_for(task, 1, 2)), pytest.raises(NotSupported, match="throw=False"):
        task.retry(throw=False)


def test_unknown_retry_option_is_named() -> None:
    task = compat_tasks.add
    with running(task, message_for(task, 1, 2)), pytest.raises(NotSupported, match="exchange"):
        task.retry(exchange="x")


def test_retry_rebuilds_the_message_from_the_request_without_one() -> None:
    task = compat_tasks.add
    task.push_request(
        id="tid",
        args=[1, 2],
        kwargs={},
        retries=2,
        root_id="root",
        delivery_info={"routing_key": "from-request"},
        timelimit=[10, 5],
        callbacks=[{"task": "cb"}],
        group="g",
        group_index=1,
    )
    try:
        with pytest.raises(Retry) as caught:
            task.retry(countdown=1)
    finally:
        task.pop_request()
    nxt = caught.value.message
    assert nxt is not None
    assert (nxt.id, nxt.retries, nxt.queue, nxt.time_limit, nxt.soft_time_limit) == (
        "tid",
        3,
        "from-request",
        10,
        5,
    )
    assert (nxt.callbacks, nxt.group, nxt.group_index, nxt.root_id) == (
        ({"task": "cb"},),
        "g",
        1,
        "root",
    )


def test_autoretry_retries_the_listed_exceptions(tmp_path: Any) -> None:
    task = compat_tasks.auto_retry
    path = str(tmp_path / "calls")
    with running(task, message_for(task, path)), pytest.raises(Retry) as caught:
        task.run(path)
    assert caught.value.message.retries == 1  # type: ignore[union-attr]
    assert caught.value.when == 0  # retry_kwargs countdown
    with running(task, message_for(task, path, retries=2)), pytest.raises(TransientError):
        task.run(path)  # retry_kwargs max_retries=2 reached: the exception itself


def test_autoretry_leaves_other_exceptions_alone() -> None:
    task = shared_task(
        autoretry_for=(KeyError,), dont_autoretry_for=(LookupError,), name="compat.test.dont"
    )(lambda: {}["missing"])
    with running(task, message_for(task)), pytest.raises(KeyError):
        task.run()


def test_autoretry_backoff_sets_the_countdown(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise TransientError("boom")

    task = shared_task(
        autoretry_for=(TransientError,),
        retry_backoff=2,
        retry_jitter=False,
        name="compat.test.backoff",
    )(boom)
    with running(task, message_for(task, retries=2)), pytest.raises(Retry) as caught:
        task.run()
    assert caught.value.when == 8  # 2 * 2**2


def test_backoff_is_celerys_formula() -> None:
    assert [backoff(1, n, 600) for n in range(5)] == [1, 2, 4, 8, 16]
    assert backoff(3, 10, 600) == 600
    assert 0 <= backoff(1, 5, 600, full_jitter=True) <= 32


def test_request_and_current_task_while_running() -> None:
    task = compat_tasks.whoami
    assert not current_task
    with running(task, message_for(task)):
        assert current_task.name == task.name
        info = task.run()
        assert (info["id"], info["called_directly"], info["is_eager"]) == ("tid", False, False)
        assert task.request.message is not None
    assert not current_task and task.request.id is None
