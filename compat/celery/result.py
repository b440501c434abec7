"""``AsyncResult`` and ``GroupResult``, read from ``TaskRecord`` (the system of record).

States are Celery's (``TaskRecord.celery_state``); an id without a record is PENDING. A
failure is re-raised as its own exception class when that class is already imported
(never importing a module named by stored data), else as a stand-in of the same name.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from compat.celery import exceptions, local, states
from compat.celery.exceptions import NotSupported
from compat.celery.failures import exception_from_error
from compat.celery.local import allow_join_result

if TYPE_CHECKING:
    from django_ray.models import TaskRecord, TaskRecordQuerySet

__all__ = [
    "AsyncResult",
    "EagerResult",
    "GroupResult",
    "ResultBase",
    "allow_join_result",
]


# TaskRecord's statuses of a successful and a running task (TaskStatus).
SUCCESSFUL = "SUCCESSFUL"
RUNNING = "RUNNING"


class ResultBase:
    """Base of the result classes (Celery's name)."""

    parent: ResultBase | None = None


class AsyncResult(ResultBase):
    """The state and result of one task id."""

    def __init__(
        self,
        id: str,
        backend: Any = None,
        task_name: str | None = None,
        app: Any = None,
        parent: ResultBase | None = None,
    ) -> None:
        self.id = str(id)
        self.task_name = task_name
        self.app = app
        self.parent = parent
        # True when the call asked for no result (ignore_result): get() returns None at once.
        self.ignored = False

    @property
    def task_id(self) -> str:
        return self.id

    def _record(self) -> TaskRecord | None:
        return _records().filter(pk=self.id).first()

    # -- state --------------------------------------------------------------------

    @property
    def state(self) -> str:
        """Celery's state; while the task runs, the state it reported (``update_state``)."""
        record = self._record()
        return record.celery_progress_state if record is not None else states.PENDING

    status = state

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    @property
    def result(self) -> Any:
        """The return value, the exception of a failure/retry/revoke, the meta a running
        task reported with its state (``update_state``), else None."""
        record = self._record()
        if record is None:
            return None
        if record.status == SUCCESSFUL:
            return record.return_value
        if record.celery_state in states.EXCEPTION_STATES and record.last_error:
            return exception_from_error(record.last_error)
        if record.status == RUNNING and record.progress_state:
            return record.progress
        return None

    info = result

    @property
    def traceback(self) -> str | None:
        record = self._record()
        if record is None or record.celery_state not in states.EXCEPTION_STATES:
            return None
        return (record.last_error or {}).get("traceback") or None

    @property
    def children(self) -> list[AsyncResult]:
        """Results of the tasks this task sent (found by their ``parent_id``)."""
        ids = _records().filter(parent_id=self.id).exclude(pk=self.id)
        return [AsyncResult(i) for i in ids.order_by("enqueued_at").values_list("pk", flat=True)]

    # Fields Celery shows with result_extended=True; the record always has them.
    def _field(self, name: str) -> Any:
        record = self._record()
        return getattr(record, name) if record is not None else None

    name = property(lambda self: self._field("task_name") or self.task_name)
    args = property(lambda self: self._field("args"))
    kwargs = property(lambda self: self._field("kwargs"))
    date_done = property(lambda self: self._field("finished_at"))
    retries = property(lambda self: self._field("retries"))
    queue = property(lambda self: self._field("queue"))
    worker = property(lambda self: (self._field("worker_ids") or [None])[-1])

    # -- waiting ------------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        no_ack: bool = True,
        follow_parents: bool = True,
        callback: Any = None,
        on_message: Any = None,
        on_interval: Any = None,
        disable_sync_subtasks: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Wait until the task is ready and return its value (or raise its exception).

        Polls ``TaskRecord`` every ``interval`` seconds; raises ``TimeoutError`` after
        ``timeout`` seconds. ``propagate=False`` returns the exception instead.
        """
        _unsupported(callback=callback, on_message=on_message, on_interval=on_interval, **kwargs)
        if disable_sync_subtasks:
            _assert_will_not_block()
        if self.ignored:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self._record()
            if record is not None and record.is_finished:
                break
            if follow_parents:
                self._maybe_reraise_parent_error()
            if deadline is not None and time.monotonic() >= deadline:
                raise exceptions.TimeoutError("The operation timed out.")
            left = interval if deadline is None else deadline - time.monotonic()
            time.sleep(max(min(interval, left), 0))
        if follow_parents:
            self._maybe_reraise_parent_error()
        return self._value(record, propagate)

    wait = get

    async def aget(
        self, timeout: float | None = None, propagate: bool = True, **kwargs: Any
    ) -> Any:
        """Async twin of ``get()``."""
        return await sync_to_async(self.get, thread_sensitive=True)(timeout, propagate, **kwargs)

    def _value(self, record: TaskRecord, propagate: bool) -> Any:
        if record.status == SUCCESSFUL:
            return record.return_value
        error = exception_from_error(record.last_error)
        if propagate:
            raise error
        return error

    def _maybe_reraise_parent_error(self) -> None:
        parents = []
        node = self.parent
        while node is not None:
            parents.append(node)
            node = node.parent
        for parent in reversed(parents):
            if isinstance(parent, AsyncResult) and parent.state in states.PROPAGATE_STATES:
                raise parent.result

    # -- control ------------------------------------------------------------------

    def forget(self) -> None:
        """Delete the stored result (the id then reads PENDING), and the parents'."""
        if self.parent is not None and hasattr(self.parent, "forget"):
            self.parent.forget()
        _records().filter(pk=self.id).delete()

    def revoke(
        self,
        connection: Any = None,
        terminate: bool = False,
        signal: Any = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Keep the task from starting: its record becomes REVOKED and the worker skips it.

        A task already running finishes (as with Celery's ``terminate=False``).
        """
        from django_ray.celery import results

        if terminate:
            raise NotSupported(
                "revoke(terminate=True) is not supported by compat.celery: a running task "
                "is not stopped; revoke(terminate=False) keeps a pending one from starting."
            )
        _unsupported(connection=connection, wait=wait or None, timeout=timeout)
        results.revoke([self.id])

    def as_tuple(self) -> tuple[tuple[str, Any], None]:
        parent = self.parent.as_tuple() if isinstance(self.parent, AsyncResult) else None
        return (self.id, parent), None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        return other == self.id if isinstance(other, str) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"


class EagerResult(AsyncResult):
    """The result of a task run eagerly (``apply()``); it is ready once returned."""


class GroupResult(ResultBase):
    """The results of a group's members, in order."""

    def __init__(
        self,
        id: str | None = None,
        results: list[AsyncResult] | None = None,
        parent: ResultBase | None = None,
        app: Any = None,
        **kwargs: Any,
    ) -> None:
        self.id = id
        self.results = list(results or [])
        self.parent = parent
        self.app = app

    @classmethod
    def restore(cls, id: str, backend: Any = None, app: Any = None) -> GroupResult | None:
        """Rebuild a group's result from its records (``None`` if none has group ``id``)."""
        ids = (
            _records()
            .filter(group_id=id, group_index__isnull=False)
            .order_by("group_index")
            .values_list("pk", flat=True)
        )
        return cls(id, [AsyncResult(i) for i in ids]) if ids else None

    def save(self, backend: Any = None) -> GroupResult:
        """Keep the group restorable: its members' records already carry ``group_id``."""
        return self

    @property
    def children(self) -> list[AsyncResult]:
        return self.results

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        return sum(1 for r in self.results if r.successful())

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        **kwargs: Any,
    ) -> list[Any]:
        """Return every member's value, in order (``timeout`` covers the whole group)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            values.append(
                result.get(timeout=left, propagate=propagate, interval=interval, **kwargs)
            )
        return values

    join = join_native = get

    async def aget(
        self, timeout: float | None = None, propagate: bool = True, **kwargs: Any
    ) -> list[Any]:
        """Async twin of ``get()``."""
        return await sync_to_async(self.get, thread_sensitive=True)(timeout, propagate, **kwargs)

    def revoke(self, connection: Any = None, terminate: bool = False, **kwargs: Any) -> None:
        for result in self.results:
            result.revoke(connection, terminate, **kwargs)

    def forget(self) -> None:
        for result in self.results:
            result.forget()

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"


def _records() -> TaskRecordQuerySet:
    # Imported when used: compat.celery is imported before Django's apps are ready
    # (a project's celery.py is imported from its package __init__, as with Celery).
    from django_ray.models import TaskRecord

    return TaskRecord.objects.all()


def _assert_will_not_block() -> None:
    if local.join_allowed() or local.in_eager_mode():
        return
    if local.get_current_worker_task() is not None:
        raise RuntimeError(
            "Never call result.get() within a task: it blocks a worker slot; chain the "
            "tasks instead (or pass disable_sync_subtasks=False)."
        )


def _unsupported(**options: Any) -> None:
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise NotSupported(f"Argument(s) {given!r} are not supported by compat.celery results.")
