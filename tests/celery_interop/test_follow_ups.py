"""What a finished Celery-style task sends on, built by the one canvas builder (compat's).

Also: compat's exceptions reach Celery clients as Celery's classes, a blocked ``celery``
import is not Celery, and the built-in ``celery.starmap``/``celery.map`` need no set-up.
"""

from __future__ import annotations

import sys
from typing import Any
from unittest import mock

import pytest
from celery import chain, group
from celery import exceptions as celery_exceptions

from compat.celery import exceptions as compat_exceptions
from compat.celery.messages import to_django_priority
from django_ray import registry
from django_ray.celery import follow_ups, results
from django_ray.celery.stores import RedisStore
from django_ray.message import TaskMessage
from django_ray.runtime.celery_exec import is_celery_task
from tests.celery_interop.celery_app import app
from tests.celery_interop.workers import unique
from tests.compat.compat_tasks import add, collect, routed, tsum
from tests.services import REDIS_URL


def parent(**fields: Any) -> TaskMessage:
    return TaskMessage(**{"id": unique("parent"), "task": add.name, "queue": "q-parent", **fields})


def sig(name: str, *args: Any, **options: Any) -> dict[str, Any]:
    return {"task": name, "args": list(args), "kwargs": {}, "options": options,
            "subtask_type": None, "immutable": False}  # fmt: skip


@pytest.fixture
def no_result_backend(settings: Any) -> None:
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "CELERY_APP": None}
    settings.CELERY_RESULT_BACKEND = None


def test_follow_ups_are_routed_as_celery_routes_them(
    settings: Any, no_result_backend: None
) -> None:
    settings.CELERY_TASK_DEFAULT_QUEUE = "routed-default"
    done = parent(callbacks=(sig(routed.name), sig("x.unknown")))
    messages = follow_ups.on_success(done, 1, store=results.store())
    # The task's own queue, then task_default_queue: never the parent's queue.
    assert [m.queue for m in messages] == ["other-queue", "routed-default"]


def test_follow_ups_keep_their_options(no_result_backend: None) -> None:
    step = sig(add.name, 1, task_id="step-id", priority=0, countdown=60, expires=600,
               headers={"x-trace": "t"})  # fmt: skip
    [message] = follow_ups.on_success(parent(chain=(step,)), 2, store=results.store())
    assert (message.id, message.args, message.priority) == (
        "step-id",
        (2, 1),
        to_django_priority(0),
    )
    assert message.eta is not None and message.expires is not None and message.eta < message.expires
    assert message.headers == {"x-trace": "t"}


def test_several_link_callbacks_become_one_group(no_result_backend: None) -> None:
    done = parent(callbacks=(sig(add.name, 1), sig(add.name, 2)))
    first, second = follow_ups.on_success(done, 10, store=results.store())
    assert (first.args, second.args) == ((10, 1), (10, 2))
    assert first.group == second.group is not None
    assert (first.group_index, second.group_index) == (0, 1)
    assert first.parent_id == second.parent_id == done.id


def celery_sent(signature: Any) -> TaskMessage:
    """Return the first message a real Celery client publishes for ``signature``."""
    sent: list[dict[str, Any]] = []

    def send_task(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        sent.append({"task": name, "args": args, **options})
        return app.AsyncResult(options.get("task_id") or "unused")

    with mock.patch.object(app, "send_task", side_effect=send_task):
        signature.apply_async()
    first = sent[0]
    return TaskMessage(id=first["task_id"], task=first["task"], args=tuple(first["args"]),
                       queue="q-parent", chain=tuple(first.get("chain") or ()))  # fmt: skip


def test_chord_after_the_first_step_of_a_celery_chain(no_result_backend: None) -> None:
    canvas = chain(
        app.signature(add.name, (1, 1)),
        group(app.signature(add.name, (1,)), app.signature(add.name, (2,))),
        app.signature(tsum.name),
    )
    first = celery_sent(canvas)
    chord_sig = first.chain[-1]
    header = follow_ups.on_success(first, 2, store=results.store())
    assert [(m.args, m.group_index) for m in header] == [((2, 1), 0), ((2, 2), 1)]
    assert header[0].group == chord_sig["kwargs"]["header"]["options"]["task_id"]
    # The body keeps the id Celery gave it, so the client's result is the body's.
    body = header[0].chord
    assert body is not None
    assert body["options"]["task_id"] == chord_sig["kwargs"]["body"]["options"]["task_id"]


@pytest.mark.redis
@pytest.mark.django_db
def test_a_chord_the_worker_sends_is_joined_in_redis(settings: Any) -> None:
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "CELERY_APP": None}
    settings.CELERY_RESULT_BACKEND = REDIS_URL
    store = results.store()
    assert isinstance(store, RedisStore)
    chord_sig = {
        "task": "celery.chord", "args": [], "options": {}, "subtask_type": "chord",
        "immutable": False,
        "kwargs": {"header": {"task": "celery.group", "args": [], "kwargs": {
            "tasks": [sig(add.name, 1), sig(add.name, 2)]}, "options": {},
            "subtask_type": "group", "immutable": False}, "body": sig(collect.name)},
    }  # fmt: skip
    header = follow_ups.on_success(parent(chain=(chord_sig,)), 5, store=store)
    assert store.client.get(f"celery-taskset-meta-{header[0].group}.s") == b"2"
    assert store.done(header[1], 7, children=[], store=True) == []
    [body] = store.done(header[0], 6, children=[], store=True)
    assert (body.task, body.args) == (collect.name, ([6, 7],))


@pytest.mark.redis
@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (compat_exceptions.MaxRetriesExceededError("no more"),
         celery_exceptions.MaxRetriesExceededError),
        (compat_exceptions.TimeLimitExceeded(1), celery_exceptions.TimeLimitExceeded),
        (compat_exceptions.SoftTimeLimitExceeded(), celery_exceptions.SoftTimeLimitExceeded),
        (compat_exceptions.Reject("no", False), celery_exceptions.Reject),
        (compat_exceptions.NotRegistered("x.y"), celery_exceptions.NotRegistered),
        (compat_exceptions.TaskRevokedError("revoked"), celery_exceptions.TaskRevokedError),
        (compat_exceptions.WorkerLostError("gone"), celery_exceptions.WorkerLostError),
        (compat_exceptions.ChordError("part"), celery_exceptions.ChordError),
    ],
)  # fmt: skip
def test_compat_exceptions_reach_celery_clients_as_celerys(
    exc: BaseException, expected: type[BaseException]
) -> None:
    store = RedisStore(REDIS_URL, expires=600)
    message = TaskMessage(id=unique("wire"), task=add.name, queue="q")
    store.failed(message, exc, "Traceback ...", store=True)
    with pytest.raises(expected):
        app.AsyncResult(message.id).get(timeout=5)


def test_a_blocked_celery_import_is_not_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "celery", None)  # how a project forbids the import
    assert is_celery_task(add) is False


def test_builtins_need_no_set_up(monkeypatch: pytest.MonkeyPatch, no_result_backend: None) -> None:
    named = {k: v for k, v in registry._named.items() if k not in {"celery.starmap", "celery.map"}}
    monkeypatch.setattr(registry, "_named", named)  # a fresh process: nothing registered them
    entry = registry.resolve("celery.starmap")
    assert entry.obj.run({"task": add.name}, [[1, 2], [3, 4]]) == [3, 7]
    assert registry.resolve("celery.map").obj.run({"task": collect.name}, [[1], [2]]) == [[1], [2]]
