"""What the Ray runners share: the runtime environment, per-task Ray options, lost attempts.

Ray task processes must set Django up with the worker's settings: the settings module,
``sys.path`` and the ``DJANGO_RAY_*`` environment travel in a ``runtime_env``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from django_ray import conf
from django_ray.message import TaskMessage
from django_ray.runtime.execute import Outcome

logger = logging.getLogger(__name__)

__all__ = [
    "lost_attempt",
    "ray_options_for",
    "ray_task_options",
    "runtime_env",
    "terminated_attempt",
]


def task_env() -> dict[str, str]:
    """Return the environment variables a Ray task process needs to set Django up."""
    names = {"DJANGO_SETTINGS_MODULE", *conf.get("RAY_ENV_VARS")}
    names |= {name for name in os.environ if name.startswith("DJANGO_RAY_")}
    env = {name: os.environ[name] for name in names if name in os.environ}
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def runtime_env(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the runtime_env for task processes: configured base, then Django's env vars."""
    base: dict[str, Any] = dict(conf.get("RAY_RUNTIME_ENV") or {})
    env_vars = {**task_env(), **base.get("env_vars", {})}
    if extra:
        env_vars.update(extra.get("env_vars", {}))
        base.update({k: v for k, v in extra.items() if k != "env_vars"})
    base["env_vars"] = env_vars
    return base


RAY_TASK_KEYS = ("num_cpus", "num_gpus", "memory", "resources", "runtime_env")
JOB_ONLY_KEYS = (
    "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory", "entrypoint_resources",
)  # fmt: skip
_warned: set[str] = set()  # tasks whose ignored Ray options were logged once


def ray_options_for(message: TaskMessage) -> dict[str, Any]:
    """Return the Ray options the task of ``message`` declares (empty when none)."""
    from django_ray import registry
    from django_ray.exceptions import NotRegistered

    try:
        entry = registry.resolve(message.task)
    except NotRegistered:
        return {}  # execute() records the refusal; run it with default resources
    options: dict[str, Any] = dict(getattr(entry.obj, "ray_options", None) or {})
    if entry.kind == "django":
        backend = entry.obj.get_backend()
        if hasattr(backend, "ray_options_for"):
            options = backend.ray_options_for(entry.obj)
    return options


def ray_task_options(message: TaskMessage) -> dict[str, Any]:
    """Return the options of ``message``'s task that apply to a Ray task (``RAY_TASK_KEYS``).

    Anything else (``entrypoint_*``, or ``max_retries`` slipped into ``TASK_OPTIONS``) is
    left out: Ray's own retries stay off, retrying is ours.
    """
    options = ray_options_for(message)
    ignored = sorted(set(options) - set(RAY_TASK_KEYS) - set(JOB_ONLY_KEYS))
    if ignored and message.task not in _warned:
        _warned.add(message.task)
        logger.warning("Ignoring Ray option(s) %s of task %s.", ", ".join(ignored), message.task)
    return {key: value for key, value in options.items() if key in RAY_TASK_KEYS}


def lost_attempt(message: TaskMessage, worker_id: str, reason: str) -> Outcome:
    """Record an attempt whose process died: retry it if attempts remain, else FAILED."""
    from django.db import close_old_connections
    from django.utils import timezone

    from django_ray.exceptions import WorkerLost
    from django_ray.records import record_for
    from django_ray.runtime.execute import error_info

    close_old_connections()
    record = record_for(message)
    if record.is_finished:
        return Outcome(task_id=message.id, status=record.status, duplicate=True)
    if record.status != "RUNNING":  # it died before execute() recorded the attempt
        record.mark_running(worker_id)
    error = error_info(WorkerLost(f"The process running task {message.id} died: {reason}"))
    max_attempts = _max_attempts(message)
    if record.attempts < max_attempts:
        retry = message.replace(retries=message.retries + 1, eta=timezone.now())
        record.mark_retrying(error, retries=retry.retries, eta=retry.eta)
        logger.warning("Task %s [%s] lost (%s); retrying.", message.task, message.id, reason)
        return Outcome(task_id=message.id, status=record.status, publish=(retry,))
    record.mark_failed(error)
    from django_ray import results

    publish = tuple(results.mirror(record, message))
    logger.error("Task %s [%s] lost (%s); FAILED.", message.task, message.id, reason)
    return Outcome(task_id=message.id, status=record.status, publish=publish, error=reason)


def terminated_attempt(message: TaskMessage) -> Outcome:
    """Record an attempt stopped by a client's ``revoke(terminate=True)``: REVOKED "terminated"."""
    from django_ray import results
    from django_ray.records import record_for
    from django_ray.runtime.execute import close_stale_connections

    close_stale_connections()
    record = record_for(message)
    if record.is_finished:  # it finished before the cancellation reached it
        return Outcome(task_id=message.id, status=record.status, duplicate=True)
    logger.warning("Terminated %s [%s] at a client's request.", message.task, message.id)
    record.mark_revoked("terminated")
    publish = tuple(results.mirror(record, message))
    return Outcome(task_id=message.id, status=record.status, publish=publish, error="terminated")


def _max_attempts(message: TaskMessage) -> int:
    from django_ray import registry
    from django_ray.exceptions import NotRegistered

    try:
        obj = registry.resolve(message.task).obj
    except NotRegistered:
        return 1
    if hasattr(obj, "max_attempts"):
        return int(obj.max_attempts or 1)
    max_retries = getattr(obj, "max_retries", 0)
    return 1 + (max_retries if isinstance(max_retries, int) else 0)
