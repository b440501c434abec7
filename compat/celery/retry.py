"""``Task.retry()`` and ``autoretry_for``, with Celery's semantics (``app/task.py``,
``app/autoretry.py``).

A retry is the same task id published again with ``retries + 1`` and an ``eta``. Inside
the worker ``retry()`` does not publish: it raises ``Retry`` whose ``message`` is that
next ``TaskMessage``, and the worker publishes it with the attempt's outcome (so the
retry and the RETRY state are stored together). Past ``max_retries`` it raises ``exc``,
or ``MaxRetriesExceededError``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import wraps
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from compat.celery.context import Context
from compat.celery.exceptions import Ignore, NotSupported, Retry
from compat.celery.messages import custom_headers, expires_at, parse_moment, to_django_priority
from django_ray.message import TaskMessage, normalize_arguments

if TYPE_CHECKING:
    from compat.celery.task import Task

__all__ = ["add_autoretry_behaviour", "backoff", "retry", "retry_message"]

RETRY_OPTIONS = frozenset(
    {"queue", "priority", "expires", "time_limit", "soft_time_limit", "headers"}
)


def retry(
    task: Task[Any, Any],
    args: Any = None,
    kwargs: Any = None,
    exc: BaseException | None = None,
    throw: bool = True,
    eta: datetime | None = None,
    countdown: float | None = None,
    max_retries: int | None = None,
    **options: Any,
) -> Retry:
    """Raise ``Retry`` carrying the next attempt's message (see the module docstring)."""
    request = task.request
    retries = request.retries + 1
    limit = task.max_retries if max_retries is None else max_retries
    if request.called_directly:
        # Not run by a worker (a plain call): there is nothing to retry; re-raise.
        raise exc or Retry("Task can be retried", None)
    if not throw:
        raise NotSupported(
            "retry(throw=False) is not supported by compat.celery: the next attempt is "
            "published only when Retry is raised; use raise self.retry(...)."
        )
    if not eta and countdown is None:
        countdown = task.default_retry_delay
    message = retry_message(
        task, request, args, kwargs, eta=eta, countdown=countdown, retries=retries, options=options
    )
    if limit is not None and retries > limit:
        if exc is not None:
            raise exc
        args, kwargs = list(message.args), dict(message.kwargs)
        raise task.MaxRetriesExceededError(
            f"Can't retry {task.name}[{request.id}] args:{args} kwargs:{kwargs}",
            task_args=args,
            task_kwargs=kwargs,
        )
    from compat.celery.canvas import Signature

    options = {"task_id": message.id, "eta": message.eta}
    sig = Signature(task.name, message.args, message.kwargs, options)
    raise Retry(message, exc=exc, when=eta or countdown, is_eager=request.is_eager, sig=sig)


def retry_message(
    task: Task[Any, Any],
    request: Context,
    args: Any,
    kwargs: Any,
    *,
    eta: datetime | None,
    countdown: float | None,
    retries: int,
    options: Mapping[str, Any],
) -> TaskMessage:
    """Return the message of the next attempt: the current one, ``retries + 1``, its eta."""
    unknown = sorted(set(options) - RETRY_OPTIONS)
    if unknown:
        raise NotSupported(f"retry() option(s) {unknown!r} are not supported by compat.celery.")
    now = timezone.now()
    base = request.message or _message_from_request(task, request)
    new_args, new_kwargs = normalize_arguments(
        list(base.args if args is None else args), dict(base.kwargs if kwargs is None else kwargs)
    )
    changes: dict[str, Any] = {
        "args": new_args,
        "kwargs": new_kwargs,
        "retries": retries,
        "eta": parse_moment(eta, "eta") if eta else now + timedelta(seconds=countdown or 0),
    }
    if options.get("queue"):
        changes["queue"] = options["queue"]
    if options.get("priority") is not None:
        changes["priority"] = to_django_priority(options["priority"])
    if options.get("expires") is not None:
        changes["expires"] = expires_at(options["expires"], now)
    for key in ("time_limit", "soft_time_limit"):
        if options.get(key) is not None:
            changes[key] = options[key]
    if options.get("headers"):
        changes["headers"] = {**base.headers, **custom_headers(options["headers"])}
    return base.replace(**changes)


def _message_from_request(task: Task[Any, Any], request: Context) -> TaskMessage:
    """Rebuild the running message from ``request`` (when the worker gave no ``message``)."""
    from django_ray import conf
    from django_ray.transports.kinds import kind_of

    delivery = dict(request.delivery_info or {})
    hard, soft = [*(request.timelimit or ()), None, None][:2]
    return TaskMessage(
        id=str(request.id),
        task=task.name,
        args=tuple(request.args or ()),
        kwargs=dict(request.kwargs or {}),
        queue=delivery.get("routing_key") or task.queue or task.app.conf.task_default_queue,
        priority=kind_of(conf.broker_url()).from_broker_priority(delivery.get("priority")),
        expires=parse_moment(request.expires, "expires"),
        time_limit=hard or request.time_limit,
        soft_time_limit=soft or request.soft_time_limit,
        root_id=request.root_id or request.id,
        parent_id=request.parent_id,
        group=request.group,
        group_index=request.group_index,
        callbacks=tuple(request.callbacks or ()),
        errbacks=tuple(request.errbacks or ()),
        chain=tuple(request.chain or ()),
        chord=request.chord,
        ignore_result=request.ignore_result,
        shadow=request.shadow,
        reply_to=request.reply_to,
        correlation_id=request.correlation_id,
        headers=dict(request.headers or {}),
    )


def backoff(factor: int, retries: int, maximum: int, full_jitter: bool = False) -> int:
    """Return Celery's exponential backoff: ``min(maximum, factor * 2**retries)``, jittered."""
    countdown = min(maximum, factor * (2**retries))
    if full_jitter:
        countdown = random.randrange(countdown + 1)
    return max(0, countdown)


def add_autoretry_behaviour(task: Task[Any, Any]) -> None:
    """Wrap ``task.run`` so that ``autoretry_for`` exceptions call ``task.retry(exc=...)``."""
    autoretry_for = tuple(task.autoretry_for or ())
    if not autoretry_for or hasattr(task, "_orig_run"):
        return
    dont_autoretry_for = tuple(task.dont_autoretry_for or ())
    retry_kwargs = dict(task.retry_kwargs or {})
    retry_backoff = float(task.retry_backoff)
    retry_backoff_max = int(task.retry_backoff_max)
    retry_jitter = task.retry_jitter
    orig: Callable[..., Any] = task.run

    @wraps(orig)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return orig(*args, **kwargs)
        except (Ignore, Retry):
            raise
        except dont_autoretry_for:
            raise
        except autoretry_for as exc:
            attempt = dict(retry_kwargs)
            if retry_backoff:
                attempt["countdown"] = backoff(
                    int(max(1.0, retry_backoff)),
                    task.request.retries,
                    retry_backoff_max,
                    full_jitter=retry_jitter,
                )
            raise task.retry(exc=exc, **attempt) from exc

    task._orig_run = orig  # type: ignore[attr-defined]
    task.run = run  # type: ignore[method-assign]
