"""Where Celery-style results go: the project's Celery app backend, Celery's Redis format,
or, when the project has neither, nowhere but ``TaskRecord`` (``RecordStore``).

``CeleryAppStore`` hands every state change to ``app.backend`` (``mark_as_done``,
``mark_as_failure``, ``mark_as_retry``, ``mark_as_revoked``; ``store_result`` for STARTED
and a task's reported progress), which also fails the rest
of a chain, calls errbacks and counts chord parts. ``RedisStore`` writes the same
``celery-task-meta-<id>`` documents with redis-py when Celery is not installed, and
returns the follow-up messages (errbacks, a chord body) for the worker to publish. Both
store a chord's header size (``set_chord_size``) for whoever sends its header.
``RecordStore`` writes nothing (the record already holds the outcome) and joins chords
through ``TaskRecord`` (``django_ray.celery.chords``), so there is always a store and no caller
branches on "no result backend".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from django_ray.celery import chords, follow_ups, states
from django_ray.celery import wire as fmt
from django_ray.message import TaskMessage

__all__ = ["CeleryAppStore", "RecordStore", "RedisStore", "ResultStore"]


class ResultStore(Protocol):
    """The state changes of a Celery-style task, as its clients must see them."""

    def started(self, message: TaskMessage, hostname: str) -> None: ...

    def progress(
        self, task_id: str, state: str, meta: Any, message: TaskMessage | None = None
    ) -> None:
        """Store a running task's reported state (``update_state``), ``meta`` as its info."""
        ...

    def done(
        self, message: TaskMessage, value: Any, *, children: Sequence[str], store: bool
    ) -> list[TaskMessage]: ...

    def failed(
        self, message: TaskMessage, exc: BaseException, traceback: str | None, *, store: bool
    ) -> list[TaskMessage]: ...

    def retried(
        self, message: TaskMessage, exc: BaseException | None, traceback: str | None
    ) -> None: ...

    def revoked(
        self, task_id: str, reason: str, message: TaskMessage | None = None
    ) -> list[TaskMessage]: ...

    def set_chord_size(self, group_id: str, size: int) -> None: ...

    def redelivered(self, message: TaskMessage) -> list[TaskMessage]:
        """Return what a finished task's duplicate delivery must still send (a chord's end)."""
        ...


class RecordStore:
    """No Celery result backend: ``TaskRecord`` holds every outcome; chords join through it.

    Each chord header part is a record with ``group_id`` and ``group_index``, and the body
    carries the header size (``chord_size``), so nothing needs storing here.
    """

    def started(self, message: TaskMessage, hostname: str) -> None:
        return None

    def progress(
        self, task_id: str, state: str, meta: Any, message: TaskMessage | None = None
    ) -> None:
        return None  # TaskRecord.progress holds it

    def done(
        self, message: TaskMessage, value: Any, *, children: Sequence[str], store: bool
    ) -> list[TaskMessage]:
        return chords.part_finished(message)

    def failed(
        self, message: TaskMessage, exc: BaseException, traceback: str | None, *, store: bool
    ) -> list[TaskMessage]:
        return follow_ups.errbacks(message, store=None) + chords.part_finished(message)

    def retried(
        self, message: TaskMessage, exc: BaseException | None, traceback: str | None
    ) -> None:
        return None

    def revoked(
        self, task_id: str, reason: str, message: TaskMessage | None = None
    ) -> list[TaskMessage]:
        return chords.part_finished(message) if message is not None else []

    def set_chord_size(self, group_id: str, size: int) -> None:
        return None  # the body message carries it

    def redelivered(self, message: TaskMessage) -> list[TaskMessage]:
        # A chord part redelivered after its worker stopped before joining: join now (the
        # join sends the body once, whoever asks).
        return chords.part_finished(message)


class CeleryAppStore:
    """Store through the project's real Celery app (Celery installed and configured)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.backend = app.backend

    def context(self, message: TaskMessage, hostname: str = "") -> Any:
        """Return a Celery ``Context`` for ``message`` (what ``task.request`` holds)."""
        from celery.app.task import Context

        from django_ray import conf
        from django_ray.transport import broker_kind, to_broker_priority

        priority = to_broker_priority(broker_kind(conf.broker_url()), message.priority)
        return Context(fmt.request_dict(message, hostname=hostname, broker_priority=priority))

    def started(self, message: TaskMessage, hostname: str) -> None:
        import os

        self.backend.store_result(
            message.id, {"pid": os.getpid(), "hostname": hostname}, states.STARTED,
            request=self.context(message, hostname),
        )  # fmt: skip

    def progress(
        self, task_id: str, state: str, meta: Any, message: TaskMessage | None = None
    ) -> None:
        # What Celery's Task.update_state() does: store_result with the custom state.
        request = self.context(message) if message is not None else None
        self.backend.store_result(task_id, meta, state, request=request)

    def done(
        self, message: TaskMessage, value: Any, *, children: Sequence[str], store: bool
    ) -> list[TaskMessage]:
        request = self.context(message)
        request.children.extend(self.app.AsyncResult(c) for c in children)
        self.backend.mark_as_done(message.id, value, request=request, store_result=store)
        return []

    def failed(
        self, message: TaskMessage, exc: BaseException, traceback: str | None, *, store: bool
    ) -> list[TaskMessage]:
        self.backend.mark_as_failure(
            message.id, exc, traceback, request=self.context(message), store_result=store
        )
        return []

    def retried(
        self, message: TaskMessage, exc: BaseException | None, traceback: str | None
    ) -> None:
        self.backend.mark_as_retry(message.id, exc, traceback, request=self.context(message))

    def revoked(
        self, task_id: str, reason: str, message: TaskMessage | None = None
    ) -> list[TaskMessage]:
        request = self.context(message) if message is not None else None
        self.backend.mark_as_revoked(task_id, reason, request=request)
        return []

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Store a chord's header size where the app backend's chord join reads it."""
        self.backend.set_chord_size(group_id, size)

    def redelivered(self, message: TaskMessage) -> list[TaskMessage]:
        return []  # the app backend counted the part when it finished


# Record one chord part and claim the body once every part is in (the keys and their
# meaning are those of Celery's Redis backend, so a chord split between a Celery worker
# and ours completes once).
CHORD_PART_LUA = """
local jkey, tkey, skey, dkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local member, value, score, expires = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('GET', ckey) == 'done' then return {-1, 0} end
if redis.call('SISMEMBER', dkey, member) == 0 then
    redis.call('ZADD', jkey, score, value)
    redis.call('SADD', dkey, member)
end
local ready = redis.call('ZCARD', jkey)
if expires > 0 then
    for _, key in ipairs({jkey, tkey, skey, dkey}) do redis.call('EXPIRE', key, expires) end
end
local size = redis.call('GET', skey) or ARGV[6]
local claimed = 0
if size and size ~= '' and ready == tonumber(size) + tonumber(redis.call('GET', tkey) or 0) then
    if redis.call('SET', ckey, ARGV[5], 'NX', 'EX', 300) then claimed = 1 end
end
return {ready, claimed}
"""


class RedisStore:
    """Write Celery's Redis result format with redis-py (no Celery needed)."""

    def __init__(self, url: str, *, expires: int | None) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.expires = expires
        self._chord_script = self.client.register_script(CHORD_PART_LUA)

    # -- the key/value format -----------------------------------------------------

    def set(self, task_id: str, meta: dict[str, Any]) -> None:
        """SETEX and PUBLISH ``meta`` under ``celery-task-meta-<id>``, unless already SUCCESS."""
        key = f"celery-task-meta-{task_id}"
        current = self.client.get(key)
        if current is not None and json.loads(current).get("status") == states.SUCCESS:
            return
        payload = json.dumps(meta)
        with self.client.pipeline() as pipe:
            if self.expires:
                # SETEX as Celery sends it (redis-py 8 deprecates its setex() helper).
                pipe.execute_command("SETEX", key, self.expires, payload)
            else:
                pipe.set(key, payload)
            pipe.publish(key, payload)
            pipe.execute()

    def get(self, task_id: str) -> dict[str, Any] | None:
        raw = self.client.get(f"celery-task-meta-{task_id}")
        return json.loads(raw) if raw is not None else None

    def _store(
        self,
        message: TaskMessage,
        state: str,
        result: Any,
        traceback: str | None = None,
        children: Sequence[str] = (),
    ) -> None:
        self.set(
            message.id,
            fmt.result_meta(
                message.id, state, result, traceback, children=children,
                parent_id=message.parent_id, group_id=message.group,
            ),
        )  # fmt: skip

    # -- state changes ------------------------------------------------------------

    def started(self, message: TaskMessage, hostname: str) -> None:
        import os

        self._store(message, states.STARTED, {"pid": os.getpid(), "hostname": hostname})

    def progress(
        self, task_id: str, state: str, meta: Any, message: TaskMessage | None = None
    ) -> None:
        current = self.get(task_id)
        if current is not None and current.get("status") in states.READY_STATES:
            return  # it finished meanwhile: a report never hides its outcome
        if message is not None:
            self._store(message, state, meta)
        else:
            self.set(task_id, fmt.result_meta(task_id, state, meta))

    def done(
        self, message: TaskMessage, value: Any, *, children: Sequence[str], store: bool
    ) -> list[TaskMessage]:
        if store:
            self._store(message, states.SUCCESS, value, children=children)
        return self._chord_part(message, states.SUCCESS, value)

    def failed(
        self, message: TaskMessage, exc: BaseException, traceback: str | None, *, store: bool
    ) -> list[TaskMessage]:
        encoded = fmt.encode_exception(exc)
        if store:
            self._store(message, states.FAILURE, encoded, traceback)
        for step in message.chain:  # the rest of a chain fails with it, so get() raises
            step_id = (step.get("options") or {}).get("task_id")
            if step_id:
                self.set(step_id, fmt.result_meta(step_id, states.FAILURE, encoded, traceback))
        errbacks = follow_ups.errbacks(message, store=self)
        return self._chord_part(message, states.FAILURE, encoded) + errbacks

    def retried(
        self, message: TaskMessage, exc: BaseException | None, traceback: str | None
    ) -> None:
        # Celery stores the exc given to retry(), or null when there was none.
        encoded = fmt.encode_exception(exc) if exc is not None else None
        self._store(message, states.RETRY, encoded, traceback)

    def revoked(
        self, task_id: str, reason: str, message: TaskMessage | None = None
    ) -> list[TaskMessage]:
        encoded = {
            "exc_type": "TaskRevokedError",
            "exc_message": [reason],
            "exc_module": "celery.exceptions",
        }
        if message is None:
            self.set(task_id, fmt.result_meta(task_id, states.REVOKED, encoded))
            return []
        self._store(message, states.REVOKED, encoded)
        return self._chord_part(message, states.REVOKED, encoded)

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Store a chord's header size, as a Celery client applying the chord does."""
        self.client.set(f"celery-taskset-meta-{group_id}.s", size, ex=self.expires or None)

    def redelivered(self, message: TaskMessage) -> list[TaskMessage]:
        return []  # the part was counted in Redis when it finished

    # -- chords ---------------------------------------------------------------------

    def _chord_part(self, message: TaskMessage, state: str, result: Any) -> list[TaskMessage]:
        """Count one chord header part; return the body message once all parts are in."""
        if message.chord is None or not message.group:
            return []
        gid = message.group
        keys = [f"celery-taskset-meta-{gid}{suffix}" for suffix in (".j", ".t", ".s", ".d", ".c")]
        index = message.group_index if message.group_index is not None else "+inf"
        encoded = json.dumps([1, message.id, state, result])
        # The size a Celery client stored; else the one the body carries (compat.celery).
        size = message.chord.get("chord_size")
        ready, claimed = self._chord_script(
            keys=keys,
            args=[
                f"{message.id}:{index}", encoded, index, self.expires or 0, uuid.uuid4().hex,
                size if isinstance(size, int) else "",
            ],
        )  # fmt: skip
        if ready == -1 or not claimed:
            return []
        raw_parts: list[bytes] = self.client.zrange(keys[0], 0, -1)  # type: ignore[assignment]
        parts = [json.loads(raw) for raw in raw_parts]
        self.client.delete(*keys[:4])
        self.client.set(keys[4], "done", ex=300)
        body = message.chord
        body_id = (body.get("options") or {}).get("task_id") or ""
        failed = next((p for p in parts if p[2] in (states.FAILURE, states.REVOKED)), None)
        if failed is not None:
            # Celery stores ChordError on the body when a header part failed.
            error = {
                "exc_type": "ChordError",
                "exc_message": [f"Dependency {failed[1]} raised {failed[3].get('exc_type')}"],
                "exc_module": "celery.exceptions",
            }
            if body_id:
                self.set(body_id, fmt.result_meta(body_id, states.FAILURE, error))
            return []
        return follow_ups.chord_body(message, [p[3] for p in parts], store=self)
