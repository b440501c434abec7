"""TaskMessage and its wire format: Celery protocol v2 with a JSON body, never pickle."""

from __future__ import annotations

import dataclasses
import json
import pickle
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from celery import Celery
from kombu.serialization import dumps as kombu_dumps

from django_ray.exceptions import MalformedMessage
from django_ray.message import (
    MAX_HEADER_BYTES,
    TaskMessage,
    decode,
    new_task_id,
    normalize_arguments,
)

PROTOCOL_V2_HEADERS = {
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
}  # fmt: skip


def full_message() -> TaskMessage:
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    return TaskMessage(
        id=new_task_id(),
        task="tests.tasks.add",
        args=(1, "two", [3]),
        kwargs={"k": {"nested": True}},
        queue="q1",
        priority=42,
        eta=eta,
        expires=eta + timedelta(hours=1),
        retries=2,
        time_limit=30.0,
        soft_time_limit=20.0,
        root_id="root-1",
        parent_id="parent-1",
        group="group-1",
        group_index=3,
        callbacks=({"task": "tests.tasks.noop", "args": [], "kwargs": {}, "options": {}},),
        chain=({"task": "tests.tasks.add", "args": [1], "kwargs": {}, "options": {}},),
        chord={"task": "tests.tasks.noop", "args": [], "kwargs": {}, "options": {}},
        backend="default",
    )


def roundtrip(message: TaskMessage, **kwargs: object) -> TaskMessage:
    return decode(
        headers=message.wire_headers(),
        body=message.wire_body().encode(),
        content_type="application/json",
        **kwargs,  # type: ignore[arg-type]
    )


def wire(headers: dict | None = None, body: object = ([], {}, {}), **extra: object) -> dict:
    base = {"task": "tests.tasks.add", "id": "the-id"}
    return {
        "headers": {**base, **(headers or {})},
        "body": body if isinstance(body, bytes | str) else json.dumps(body),
        "content_type": "application/json",
        **extra,
    }


# -- the dataclass ---------------------------------------------------------------------


def test_task_message_is_a_frozen_slotted_dataclass() -> None:
    message = full_message()
    assert dataclasses.is_dataclass(message)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.priority = 1  # type: ignore[misc]
    assert not hasattr(message, "__dict__")
    changed = message.replace(retries=3)
    assert (changed.retries, message.retries) == (3, 2)


def test_new_task_id_is_a_uuid_string_shorter_than_64() -> None:
    task_id = new_task_id()
    assert isinstance(task_id, str) and len(task_id) < 64
    assert str(UUID(task_id)) == task_id
    assert new_task_id() != task_id


# -- encoding --------------------------------------------------------------------------


def test_headers_are_celery_protocol_v2_and_carry_priority_and_backend() -> None:
    message = full_message()
    headers = message.wire_headers()
    assert set(headers) >= PROTOCOL_V2_HEADERS
    assert headers["task"] == "tests.tasks.add"
    assert headers["id"] == message.id
    assert headers["lang"] == "py"
    assert headers["eta"] == "2030-01-02T03:04:05+00:00"
    assert headers["expires"] == "2030-01-02T04:04:05+00:00"
    assert headers["retries"] == 2
    assert headers["timelimit"] == [30.0, 20.0]
    assert (headers["root_id"], headers["parent_id"]) == ("root-1", "parent-1")
    assert (headers["group"], headers["group_index"]) == ("group-1", 3)
    assert headers["django_ray_priority"] == 42
    assert headers["django_ray_backend"] == "default"
    json.dumps(headers)  # the headers themselves are plain JSON


def test_root_id_defaults_to_the_task_id() -> None:
    message = TaskMessage(id="abc", task="tests.tasks.noop")
    assert message.wire_headers()["root_id"] == "abc"
    assert "django_ray_backend" not in message.wire_headers()


def test_body_is_a_json_array_of_args_kwargs_embed() -> None:
    message = full_message()
    args, kwargs, embed = json.loads(message.wire_body())
    assert args == [1, "two", [3]]
    assert kwargs == {"k": {"nested": True}}
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}
    assert embed["callbacks"] == [dict(message.callbacks[0])]
    assert embed["errbacks"] is None
    assert embed["chain"] == [dict(message.chain[0])]
    assert embed["chord"] == message.chord


def test_encode_decode_roundtrip_keeps_every_field() -> None:
    message = full_message()
    decoded = roundtrip(message, properties={"correlation_id": message.id})
    for name in (
        "id", "task", "args", "kwargs", "priority", "eta", "expires", "retries", "time_limit",
        "soft_time_limit", "root_id", "parent_id", "group", "group_index", "callbacks",
        "errbacks", "chain", "chord", "backend",
    ):  # fmt: skip
        assert getattr(decoded, name) == getattr(message, name), name
    assert decoded.is_django_task
    assert decoded.correlation_id == message.id


def test_queue_comes_from_the_delivery() -> None:
    message = full_message()
    assert roundtrip(message, queue="q1").queue == "q1"
    assert roundtrip(message, delivery_info={"routing_key": "rk"}).queue == "rk"
    assert roundtrip(message).queue == "default"


def test_unknown_headers_are_kept_and_sent_again() -> None:
    message = TaskMessage(id="x", task="tests.tasks.noop", headers={"x-custom": "v"})
    decoded = roundtrip(message)
    assert decoded.headers == {"x-custom": "v"}
    assert decoded.wire_headers()["x-custom"] == "v"


# -- what a real Celery client publishes ------------------------------------------------


def test_decodes_what_a_real_celery_client_publishes() -> None:
    app = Celery(set_as_current=False)
    sent = app.amqp.as_task_v2(
        "celery-id", "proj.tasks.mul", args=(2, 3), kwargs={"z": 1}, countdown=60, expires=120,
        time_limit=5, soft_time_limit=3, group_id="g", group_index=1, root_id="r",
        parent_id="p", retries=1,
        callbacks=[{"task": "proj.tasks.cb", "args": [], "kwargs": {}, "options": {}}],
    )  # fmt: skip
    _, _, body = kombu_dumps(sent.body, serializer="json")
    decoded = decode(
        headers=sent.headers,
        body=body,
        content_type="application/json",
        properties=sent.properties,
        delivery_info={"routing_key": "celery"},
        broker_priority=7,
    )
    assert decoded.id == "celery-id"
    assert decoded.task == "proj.tasks.mul"
    assert decoded.args == (2, 3)
    assert decoded.kwargs == {"z": 1}
    assert decoded.queue == "celery"
    assert decoded.retries == 1
    assert (decoded.time_limit, decoded.soft_time_limit) == (5.0, 3.0)
    assert (decoded.group, decoded.group_index) == ("g", 1)
    assert (decoded.root_id, decoded.parent_id) == ("r", "p")
    assert decoded.callbacks[0]["task"] == "proj.tasks.cb"
    assert decoded.eta is not None and decoded.eta > datetime.now(UTC) + timedelta(seconds=50)
    assert decoded.expires is not None and decoded.expires > decoded.eta
    # Not a Django task; the broker's priority is used when the producer sent none of ours.
    assert decoded.backend is None and not decoded.is_django_task
    assert decoded.priority == 7


def test_a_real_celery_worker_runs_our_message() -> None:
    # The wire format is shared both ways: a Celery worker's Request parses and runs ours.
    from celery.worker.request import Request
    from kombu import Message

    app = Celery(set_as_current=False)

    @app.task(name="tests.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    message = TaskMessage(id="ours", task="tests.tasks.add", args=(2,), kwargs={"y": 5},
                          priority=5, backend="default", time_limit=4.0)  # fmt: skip
    raw = Message(
        body=message.wire_body().encode(),
        headers=message.wire_headers(),
        content_type="application/json",
        content_encoding="utf-8",
        delivery_info={"routing_key": "default", "exchange": ""},
        properties={"correlation_id": message.id},
    )
    request = Request(raw, app=app)
    assert (request.id, request.task_name) == ("ours", "tests.tasks.add")
    assert (request.args, request.kwargs) == ([2], {"y": 5})
    assert request.time_limits == [4.0, None]
    assert request.execute() == 7


def test_naive_eta_is_read_as_utc() -> None:
    decoded = decode(**wire({"eta": "2030-01-01T00:00:00"}))
    assert decoded.eta == datetime(2030, 1, 1, tzinfo=UTC)


def test_priority_is_clamped_to_djangos_range() -> None:
    assert decode(**wire({"django_ray_priority": 500})).priority == 100
    assert decode(**wire({"django_ray_priority": -500})).priority == -100


def test_null_embed_and_timelimit_are_accepted() -> None:
    decoded = decode(**wire({"timelimit": [None, None]}, body=[[1], {}, None]))
    assert decoded.args == (1,)
    assert (decoded.time_limit, decoded.soft_time_limit) == (None, None)


# -- never unpickle, refuse what is not protocol v2 JSON --------------------------------

CANARY: list[str] = []


def _canary(label: str) -> None:
    CANARY.append(label)


class Trap:
    """Unpickling this calls ``_canary``: proof that something was unpickled."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_canary, ("unpickled",))


@pytest.mark.parametrize(
    "content_type",
    ["application/x-python-serialize", "application/x-yaml", "application/data", None, ""],
)
def test_non_json_content_types_are_refused_without_reading_the_body(
    content_type: str | None,
) -> None:
    CANARY.clear()
    body = pickle.dumps([[Trap()], {}, {}])
    pickle.loads(pickle.dumps(Trap()))  # the trap works
    assert CANARY == ["unpickled"]
    CANARY.clear()
    with pytest.raises(MalformedMessage, match="content type") as info:
        decode(
            headers={"task": "tests.tasks.add", "id": "p1"}, body=body, content_type=content_type
        )
    assert CANARY == []
    assert info.value.task_id == "p1"
    assert info.value.task_name == "tests.tasks.add"


def test_json_content_type_with_parameters_is_accepted() -> None:
    decode(**{**wire(), "content_type": "application/json; charset=utf-8"})


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (wire(body=b"{not json"), "not valid JSON"),
        (wire(body=b"\xff\xfe"), "not valid JSON"),
        (wire(body={"task": "tests.tasks.add", "id": "x", "args": []}), "protocol v1"),
        (wire(body=[[], {}]), r"\[args, kwargs, embed\]"),
        (wire(body=b"\"just a string\""), r"\[args, kwargs, embed\]"),
        (wire(body=[{}, {}, {}]), "args must be a list"),
        (wire(body=[[], [], {}]), "kwargs must be an object"),
        (wire(body=[[], {}, []]), "embed must be an object"),
        (wire(body=[[], {}, {"callbacks": "x"}]), "callbacks"),
        (wire({"eta": "tomorrow"}), "ISO-8601"),
        (wire({"expires": 12}), "ISO-8601"),
        (wire({"retries": -1}), "retries"),
        (wire({"id": "x" * 256}), "at most 255 characters"),
        (wire({"junk": "x" * MAX_HEADER_BYTES}), "exceed"),
    ],
    ids=[
        "invalid-json", "invalid-utf8", "protocol-v1-dict", "two-items", "string", "args",
        "kwargs", "embed", "callbacks", "eta", "expires", "retries", "long-id", "huge-headers",
    ],
)  # fmt: skip
def test_malformed_messages_are_refused_with_their_id(message: dict, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason) as info:
        decode(**message)
    assert info.value.task_name == "tests.tasks.add"
    # An id no task record can hold is not carried with the refusal (nothing to record).
    assert info.value.task_id == (None if reason == "at most 255 characters" else "the-id")


def test_message_without_task_header_is_not_protocol_v2() -> None:
    with pytest.raises(MalformedMessage, match="no 'task' header") as info:
        decode(headers={"id": "abc"}, body=b"[[], {}, {}]", content_type="application/json")
    assert info.value.task_id == "abc"
    with pytest.raises(MalformedMessage, match="no 'task' header"):
        decode(headers=None, body=b"[[], {}, {}]", content_type="application/json")


def test_message_without_id_is_refused_without_an_id() -> None:
    with pytest.raises(MalformedMessage, match="no 'id' header") as info:
        decode(
            headers={"task": "tests.tasks.add"},
            body=b"[[], {}, {}]",
            content_type="application/json",
        )
    assert info.value.task_id is None


# -- JSON arguments -------------------------------------------------------------------


def test_normalize_arguments_makes_json_values() -> None:
    args, kwargs = normalize_arguments((1, (2, 3), b"bytes"), {"a": (1,), "b": None})
    assert args == (1, [2, 3], "bytes")
    assert kwargs == {"a": [1], "b": None}


@pytest.mark.parametrize(
    "value", [datetime.now(UTC), object(), {1, 2}, float("nan"), float("inf"), b"\xff"]
)
def test_normalize_arguments_raises_type_error_for_non_json(value: object) -> None:
    with pytest.raises(TypeError):
        normalize_arguments((value,), {})
    with pytest.raises(TypeError):
        normalize_arguments((), {"v": value})
