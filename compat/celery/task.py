"""``Task``: a Celery-style task, generic over its function's parameters.

The decorators (``shared_task``, ``app.task``) make one subclass per function, as Celery
does, so ``base=`` classes and their hooks work. The worker runs a task through
``push_request(**fields)``, ``run(*args, **kwargs)`` and ``pop_request()``, reading the
attributes below and calling the hooks; ``retry()`` raises ``Retry`` carrying the next
message (``compat.celery.retry``).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from asgiref.sync import sync_to_async

from compat.celery import exceptions, local
from compat.celery.canvas import Signature
from compat.celery.context import Context
from compat.celery.messages import build_message
from compat.celery.producer import send
from compat.celery.result import AsyncResult, EagerResult
from compat.celery.retry import retry

if TYPE_CHECKING:
    from compat.celery.app import Celery

__all__ = ["Context", "Task"]


class FromConfig:
    """A task attribute that, unless set, reads the app's ``task_*`` setting when read."""

    def __init__(self, setting: str) -> None:
        self.setting = setting

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, task: Any, owner: type | None = None) -> Any:
        if task is None:
            return self
        if self.name in task.__dict__:
            return task.__dict__[self.name]
        return task.app.conf[self.setting]

    def __set__(self, task: Any, value: Any) -> None:
        task.__dict__[self.name] = value


class Task[**P, R]:
    """A task: call it, ``delay()`` it, ``apply_async()`` it, or build a ``signature``."""

    name: str = ""
    typing: bool = True
    max_retries: int | None = 3
    default_retry_delay: float = 180
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: ClassVar[Mapping[str, Any]] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: int = 600
    retry_jitter: bool = True
    queue: str | None = None
    priority: int | None = None
    expires: float | datetime | None = None
    serializer: str = "json"
    acks_late = FromConfig("task_acks_late")
    ignore_result = FromConfig("task_ignore_result")
    time_limit = FromConfig("task_time_limit")
    soft_time_limit = FromConfig("task_soft_time_limit")
    track_started = FromConfig("task_track_started")
    rate_limit = FromConfig("task_default_rate_limit")

    MaxRetriesExceededError = exceptions.MaxRetriesExceededError
    Request = Context
    _app: Celery | None = None

    @property
    def app(self) -> Celery:
        """The app this task was declared on (the current app for ``shared_task``)."""
        return self._app or local.get_current_app()

    @property
    def __name__(self) -> str:
        cls: type = type(self)
        return cls.__name__

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The task's body: the decorated function, or a subclass's override."""
        raise NotImplementedError("Tasks must define the run method.")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task's function here and now (``request.called_directly`` is True)."""
        self.push_request(args=args, kwargs=kwargs)
        try:
            return self.run(*args, **kwargs)
        finally:
            self.pop_request()

    # -- the request stack (one per thread) ------------------------------------------

    def _requests(self) -> list[Context]:
        tls = self.__dict__.get("_tls") or self.__dict__.setdefault("_tls", threading.local())
        if not hasattr(tls, "stack"):
            tls.stack = []
        return tls.stack  # type: ignore[no-any-return]

    def push_request(self, *args: Mapping[str, Any], **kwargs: Any) -> None:
        """Start a request: the worker passes Celery's fields (and ``message``).

        ``called_directly`` defaults to False when an ``id`` is given (a worker call)
        and True otherwise (a plain call); eager mode sets ``is_eager``.
        """
        request = Context(*args, **kwargs)
        if "called_directly" not in request.__dict__:
            request.called_directly = request.id is None
        if local.in_eager_mode() and not request.called_directly:
            request.is_eager = True
        self._requests().append(request)
        local.push_task(self)

    def pop_request(self) -> None:
        stack = self._requests()
        if stack:
            stack.pop()
        local.pop_task()

    @property
    def request(self) -> Context:
        """The request of the current execution (a default one outside any)."""
        stack = self._requests()
        if stack:
            return stack[-1]
        return self.__dict__.setdefault("_default_request", Context())  # type: ignore[no-any-return]

    # -- calling ------------------------------------------------------------------

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Send the task with these arguments (``apply_async(args, kwargs)``)."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Async twin of ``delay()``."""
        return await self.aapply_async(args, kwargs)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task to the broker (or run it eagerly under ``task_always_eager``).

        Options: countdown, eta, expires, queue, priority (Celery 0-9), task_id,
        headers, link, link_error, ignore_result, time_limit, soft_time_limit, shadow.
        Any other raises ``NotSupported``.
        """
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        if self.typing:
            self._check_arguments(args, kwargs)
        options = {
            **options,
            "task_id": task_id,
            "link": link,
            "link_error": link_error,
            "shadow": shadow,
        }
        message = build_message(self.name, args, kwargs, options, app=self.app, task=self)
        if send((message,), app=self.app):
            return EagerResult(message.id, task_name=self.name, app=self.app)
        result = self.AsyncResult(message.id)
        result.ignored = bool(message.ignore_result)
        return result

    async def aapply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Async twin of ``apply_async()``."""
        return await sync_to_async(self.apply_async, thread_sensitive=True)(args, kwargs, **options)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        link: Any = None,
        link_error: Any = None,
        task_id: str | None = None,
        retries: int | None = None,
        throw: bool | None = None,
        **options: Any,
    ) -> EagerResult:
        """Run the task now, in this process, through the sync runner (the worker's path).

        ``throw`` (default ``task_eager_propagates``) re-raises the task's exception.
        """
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        options = {
            **options,
            "task_id": task_id,
            "link": link,
            "link_error": link_error,
            "retries": retries,
        }
        message = build_message(self.name, args, kwargs, options, app=self.app, task=self)
        send((message,), app=self.app, eager=True, propagate=throw)
        return EagerResult(message.id, task_name=self.name, app=self.app)

    def AsyncResult(self, task_id: str, **kwargs: Any) -> AsyncResult:
        return AsyncResult(task_id, task_name=self.name, app=self.app, **kwargs)

    def _check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        try:
            inspect.signature(self.run).bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}() called with wrong arguments: {e}") from None

    # -- signatures ---------------------------------------------------------------

    def signature(
        self, args: Iterable[Any] | None = None, *starargs: Any, **starkwargs: Any
    ) -> Signature:
        """Return a signature of this task: ``signature(args, kwargs, **options)``."""
        return Signature(self, args, *starargs, **starkwargs)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """Return a signature with these (partial) arguments."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """Return an immutable signature: the parent's result is not added to its args."""
        return self.signature(args, kwargs, immutable=True)

    # -- inside a running task ------------------------------------------------------

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> exceptions.Retry:
        """Retry this task: raise ``Retry`` carrying the next attempt's message.

        Past ``max_retries`` raise ``exc`` if given, else ``MaxRetriesExceededError``.
        """
        return retry(self, args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    # Hooks the worker calls around an execution (no-ops unless a base class overrides them).
    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Run before the task body starts."""

    def on_success(
        self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Run after the task succeeded."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Run after the task failed."""

    def on_retry(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Run when the task is to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Run after the task returned, whatever the outcome."""

    # -- Celery calls we do not provide ---------------------------------------------

    def _not_supported(self, call: str, hint: str) -> Any:
        raise exceptions.NotSupported(f"Task.{call}() is not supported by compat.celery; {hint}")

    def map(self, it: Any) -> Any:
        return self._not_supported("map", "use group(task.s(x) for x in it).")

    def starmap(self, it: Any) -> Any:
        return self._not_supported("starmap", "use group(task.s(*args) for args in it).")

    def chunks(self, it: Any, n: int) -> Any:
        return self._not_supported("chunks", "use a group of tasks that each take a chunk.")

    def replace(self, sig: Any) -> Any:
        return self._not_supported("replace", "return a value and chain the next task instead.")

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any
    ) -> None:
        """Report a running task's state and ``meta`` (e.g. ``state="PROGRESS"``), as Celery.

        ``task_id`` defaults to this request's task. The record (``TaskRecord.progress``)
        and the result backend (what an unchanged Celery client's ``AsyncResult`` reads:
        ``.state`` is ``state``, ``.info`` is ``meta``) hold it while the task runs; once
        it finishes its outcome replaces it. A task that is not running (finished, waiting
        for a retry, or taken over by another delivery) keeps its state: the report is
        dropped. ``meta`` must be JSON; SUCCESS, FAILURE and REVOKED are refused (return
        or raise instead). Called directly (``task()``, no request id) it does nothing.
        See docs/celery-migration.md.
        """
        from django_ray import progress

        if kwargs:
            raise exceptions.NotSupported(
                f"Argument(s) {sorted(kwargs)!r} of update_state() are not supported by "
                "compat.celery."
            )
        request = self.request
        own = task_id is None or task_id == request.id
        task_id = task_id or request.id
        if state is None:
            raise ValueError('update_state() needs a state, e.g. state="PROGRESS".')
        if not task_id:
            return  # called directly (a plain function call, e.g. in a unit test): no task
        message = request.message if own else None
        progress.report(task_id, state, meta, message=message)

    def send_event(self, type_: str, **fields: Any) -> Any:
        return self._not_supported("send_event", "django-ray does not emit Celery events.")

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"
