"""apply_async / send_task options become the right TaskMessage, headers and TaskRecord."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from compat.celery import current_app, signature
from compat.celery.exceptions import NotSupported
from compat.celery.messages import to_django_priority
from django_ray.message import TaskMessage
from django_ray.models import QueueMessage, TaskRecord
from tests.compat import compat_tasks
from tests.compat.conftest import roundtrip

pytestmark = pytest.mark.django_db


def test_delay_creates_a_celery_record_and_publishes_one_message(
    published: list[TaskMessage],
) -> None:
    result = compat_tasks.add.delay(2, 3)
    [message] = published
    assert (message.id, message.task) == (result.id, "tests.compat.compat_tasks.add")
    assert (message.args, dict(message.kwargs)) == ((2, 3), {})
    assert message.queue == "celery"  # Celery's default queue
    assert message.backend is None and message.root_id == message.id
    record = TaskRecord.objects.get(pk=result.id)
    assert (record.origin, record.task_name, record.status) == ("celery", message.task, "READY")
    assert (record.args, record.queue) == ([2, 3], "celery")


def test_apply_async_options_reach_the_wire(published: list[TaskMessage]) -> None:
    before = timezone.now()
    link, link_error = compat_tasks.mul.s(10), compat_tasks.mul.si(0, 0)
    compat_tasks.add.apply_async(
        (1,),
        {"y": 2},
        countdown=10,
        expires=60,
        queue="q1",
        priority=5,
        task_id="tid-1",
        headers={"x-custom": "v"},
        link=link,
        link_error=link_error,
        ignore_result=True,
        time_limit=30,
        soft_time_limit=20,
        shadow="adding",
    )
    headers, body, decoded = roundtrip(published[0])
    assert headers["id"] == "tid-1" and headers["task"] == "tests.compat.compat_tasks.add"
    eta, expires = (
        datetime.fromisoformat(headers["eta"]),
        datetime.fromisoformat(headers["expires"]),
    )
    assert timedelta(seconds=10) <= eta - before < timedelta(seconds=12)
    assert timedelta(seconds=60) <= expires - before < timedelta(seconds=62)
    assert headers["timelimit"] == [30, 20]
    assert headers["x-custom"] == "v"
    assert headers["ignore_result"] is True and headers["shadow"] == "adding"
    assert body[0] == [1] and body[1] == {"y": 2}
    assert body[2]["callbacks"] == [
        {
            "task": "tests.compat.compat_tasks.mul",
            "args": [10],
            "kwargs": {},
            "options": {},
            "subtask_type": None,
            "immutable": False,
        }
    ]
    assert body[2]["errbacks"][0]["immutable"] is True
    assert decoded.queue == "q1"
    assert decoded.priority == published[0].priority == to_django_priority(5)
    assert decoded.eta == published[0].eta and decoded.headers == {"x-custom": "v"}


def test_eta_datetime_and_expires_datetime(published: list[TaskMessage]) -> None:
    eta = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    compat_tasks.add.apply_async((1, 2), eta=eta, expires=eta + timedelta(hours=1))
    headers, _, _ = roundtrip(published[0])
    assert headers["eta"] == "2031-01-02T03:04:05+00:00"
    assert headers["expires"] == "2031-01-02T04:04:05+00:00"


def test_naive_eta_is_read_in_the_current_time_zone(published: list[TaskMessage]) -> None:
    compat_tasks.add.apply_async((1, 2), eta=datetime(2031, 1, 2, 3, 4, 5))
    assert published[0].eta == datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)  # TIME_ZONE is UTC


def test_task_declaration_supplies_defaults(published: list[TaskMessage]) -> None:
    compat_tasks.routed.delay()
    compat_tasks.routed.apply_async(queue="elsewhere", time_limit=5, soft_time_limit=None)
    first, second = published
    assert (first.queue, first.time_limit, first.soft_time_limit) == ("other-queue", 30, 20)
    assert first.priority == to_django_priority(9)
    assert first.ignore_result is False  # Celery sends the task's ignore_result
    assert (second.queue, second.time_limit) == ("elsewhere", 5)


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("redis", "redis://127.0.0.1:6379/0"),
        ("amqp", "amqp://guest@localhost//"),
        ("django", "django://"),
    ],
)
def test_priority_maps_like_the_broker_orders_it(settings: Any, kind: str, url: str) -> None:
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "BROKER_URL": url}
    highest, lowest = (0, 9) if kind == "redis" else (9, 0)
    assert to_django_priority(highest) == 100
    assert to_django_priority(lowest) == -100
    from django_ray.transport import from_broker_priority, to_broker_priority

    for value in range(10):  # the transport maps it back to what the client asked for
        if kind != "django":
            assert to_broker_priority(kind, to_django_priority(value)) == value
            assert from_broker_priority(kind, value) == to_django_priority(value)


@pytest.mark.parametrize("bad", [10, -1, "high", True])
def test_priority_outside_celerys_scale_is_refused(bad: Any, published: list[TaskMessage]) -> None:
    with pytest.raises(ValueError, match="priority"):
        compat_tasks.add.apply_async((1, 2), priority=bad)
    assert published == [] and not TaskRecord.objects.exists()


def test_task_routes_pick_the_queue(settings: Any, published: list[TaskMessage]) -> None:
    settings.CELERY_TASK_ROUTES = {
        "tests.compat.compat_tasks.add": {"queue": "exact"},
        "tests.compat.*": "globbed",
    }
    compat_tasks.add.delay(1, 2)
    compat_tasks.mul.delay(1, 2)
    compat_tasks.mul.apply_async((1, 2), queue="explicit")
    assert [m.queue for m in published] == ["exact", "globbed", "explicit"]


def test_router_function_and_default_queue(settings: Any, published: list[TaskMessage]) -> None:
    settings.CELERY_TASK_DEFAULT_QUEUE = "fallback"
    settings.CELERY_TASK_ROUTES = [
        lambda name, args, kwargs, options, task=None, **kw: "odd" if args[0] % 2 else None
    ]
    compat_tasks.add.delay(1, 2)
    compat_tasks.add.delay(2, 2)
    assert [m.queue for m in published] == ["odd", "fallback"]


def test_send_task_publishes_by_name_without_the_task(published: list[TaskMessage]) -> None:
    result = current_app.send_task("elsewhere.defined", args=[1], kwargs={"k": 2}, countdown=5)
    [message] = published
    assert (message.task, message.args, dict(message.kwargs)) == (
        "elsewhere.defined",
        (1,),
        {"k": 2},
    )
    assert message.ignore_result is None  # null, as a Celery client sends it
    assert message.eta is not None and result.id == message.id


def test_signature_apply_async_uses_the_tasks_defaults(published: list[TaskMessage]) -> None:
    signature("tests.compat.compat_tasks.routed").apply_async()
    assert published[0].queue == "other-queue"


def test_message_sent_from_a_running_task_links_to_it(published: list[TaskMessage]) -> None:
    parent = compat_tasks.whoami
    parent.push_request(id="parent-id", root_id="root-id", retries=0)
    try:
        compat_tasks.add.delay(1, 1)
    finally:
        parent.pop_request()
    assert (published[0].parent_id, published[0].root_id) == ("parent-id", "root-id")


def test_django_transport_stores_the_message_in_the_transaction() -> None:
    result = compat_tasks.add.delay(4, 4)
    row = QueueMessage.objects.get(queue="celery")
    assert result.id in row.payload


def test_reusing_a_task_id_is_refused(published: list[TaskMessage]) -> None:
    compat_tasks.add.apply_async((1, 2), task_id="same")
    with pytest.raises(ValueError, match="same"):
        compat_tasks.add.apply_async((1, 2), task_id="same")


def test_non_json_arguments_are_refused(published: list[TaskMessage]) -> None:
    with pytest.raises(TypeError, match="JSON"):
        compat_tasks.add.delay(object(), 1)
    assert published == []


@pytest.mark.parametrize(
    "option",
    [
        {"exchange": "x"},
        {"routing_key": "rk"},
        {"serializer": "pickle"},
        {"compression": "gzip"},
        {"retry_policy": {"max_retries": 1}},
        {"retry": False},
        {"producer": object()},
        {"add_to_parent": False},
        {"mandatory": True},
    ],
)
def test_unsupported_apply_async_options_raise(
    option: dict[str, Any], published: list[TaskMessage]
) -> None:
    with pytest.raises(NotSupported, match=next(iter(option))):
        compat_tasks.add.apply_async((1, 2), **option)
    assert published == [] and not TaskRecord.objects.exists()


def test_options_matching_what_django_ray_always_does_are_accepted(
    published: list[TaskMessage],
) -> None:
    compat_tasks.add.apply_async((1, 2), retry=True, serializer="json", add_to_parent=True)
    assert len(published) == 1


def test_protocol_headers_cannot_be_overridden(published: list[TaskMessage]) -> None:
    with pytest.raises(NotSupported, match="retries"):
        compat_tasks.add.apply_async((1, 2), headers={"retries": 5})


def test_soft_limit_above_hard_limit_is_refused(published: list[TaskMessage]) -> None:
    with pytest.raises(ValueError, match="soft_time_limit"):
        compat_tasks.add.apply_async((1, 2), time_limit=5, soft_time_limit=10)


def test_unsupported_settings_raise_at_send_time(
    settings: Any, published: list[TaskMessage]
) -> None:
    settings.CELERY_TASK_SERIALIZER = "pickle"
    with pytest.raises(NotSupported, match="task_serializer"):
        compat_tasks.add.delay(1, 2)


def test_a_used_task_id_is_refused_and_nothing_more_is_sent() -> None:
    # On the real django:// broker, inside the test's transaction (as in a view's atomic()).
    first = compat_tasks.add.apply_async((1, 2), task_id="used-id-0001", queue="used-id")
    with pytest.raises(ValueError, match="already used by another task"):
        compat_tasks.add.apply_async((3, 4), task_id=first.id, queue="used-id")
    # Nothing of the second was written or sent, and the transaction goes on.
    assert QueueMessage.objects.filter(queue="used-id").count() == 1
    assert TaskRecord.objects.get(pk=first.id).args == [1, 2]
    second = compat_tasks.add.apply_async((5, 6), queue="used-id")
    assert QueueMessage.objects.filter(queue="used-id").count() == 2
    assert TaskRecord.objects.get(pk=second.id).args == [5, 6]
