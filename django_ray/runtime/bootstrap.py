"""Set up a process that runs tasks: Django, then the task registry, once, before anything runs.

Every process that runs a task is prepared the same way: the worker, each Ray worker
process in ``--local`` and ``--cluster`` mode, and the Ray Job entrypoint (whose own Ray
tasks, e.g. ``parallel_map`` calls, are Ray worker processes too). Preparing means
``django.setup()`` with the worker's settings, then loading the registry exactly as the
worker does: the installed apps' ``tasks`` modules, ``TASK_MODULES``, and the Celery app
with its ``include``/``imports`` and autodiscovery.

In Ray processes this runs as Ray's ``worker_process_setup_hook`` (see ``SETUP_HOOK``,
which ``runners.ray_support.runtime_env`` adds): before the process unpickles anything.
A function shipped to Ray by reference (a module-level function of a ``tasks.py`` that
uses ``@task``) imports its module on unpickling, and that import needs Django ready.

The hook never raises: Ray would only kill the process and report a bare start-up failure.
It keeps the error instead; ``ensure_ready()`` raises ``ProcessSetupFailed`` with it, naming
the process and the node, so the task that meets it ends FAILED with a message that says
what went wrong and where.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from typing import Any

from django_ray.exceptions import ProcessSetupFailed

logger = logging.getLogger(__name__)

__all__ = ["PROJECT_HOOK_VAR", "SETUP_HOOK", "ensure_ready", "prepare_ray_worker", "setup_django"]

# Ray imports this by name in each new worker process (runtime_env worker_process_setup_hook).
SETUP_HOOK = "django_ray.runtime.bootstrap.prepare_ray_worker"
# The project's own set-up hook (a dotted path), run after ours in each Ray worker process.
PROJECT_HOOK_VAR = "DJANGO_RAY_PROJECT_SETUP_HOOK"

_lock = threading.Lock()
_ready = False
_failure: str | None = None  # why preparing this process failed (the hook's error)


def setup_django() -> None:
    """Set Django up once in this process."""
    from django.apps import apps

    if not apps.ready:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
        import django

        django.setup()


def ensure_ready() -> None:
    """Set Django up and load the task registry, once; raise ``ProcessSetupFailed`` if not."""
    global _ready, _failure
    if _ready:
        return
    with _lock:
        if _ready:
            return
        try:
            setup_django()
            from django_ray import registry

            registry.autodiscover()
        except Exception as e:
            # A second try after a half-done django.setup() fails on that, not on the cause.
            _failure = _failure or _describe(e)
            raise ProcessSetupFailed(_failure) from e
        _ready, _failure = True, None


def prepare_ray_worker() -> None:
    """Ray's per-process set-up hook: prepare this process, keeping (not raising) a failure."""
    try:
        ensure_ready()
    except ProcessSetupFailed as e:
        # The process stays up; the first task it is given reports this (ensure_ready again).
        logger.error("%s", e)
        return
    project_hook = os.environ.get(PROJECT_HOOK_VAR)
    if project_hook:
        from django.utils.module_loading import import_string

        import_string(project_hook)()


def _describe(error: BaseException) -> str:
    where = f"process {os.getpid()} on {socket.gethostname()}"
    settings_module = os.environ.get("DJANGO_SETTINGS_MODULE", "<unset>")
    last = traceback.format_exception_only(error)[-1].strip()
    return (
        f"Setting up the task process ({where}) failed: {last}. The process could not set "
        f"Django up with DJANGO_SETTINGS_MODULE={settings_module!r} or import the project's "
        "task modules. On a Ray cluster, the project's code, settings and environment must "
        "reach every node: see DJANGO_RAY['RAY_ENV_VARS'] and ['RAY_RUNTIME_ENV'] in docs/modes.md."
    )


def check_connections(*, verify: bool = False) -> None:
    """Before a task: drop a database connection that an error left unusable, keep the rest.

    ``verify``: ask every open connection whether it still answers (``is_usable``), not only
    one an error marked: one kept through an idle spell may have been ended by the server.

    A healthy connection is kept from one task to the next while work continues (a new
    connection per task costs more than a no-op task: on SQLite, closing the last
    connection even checkpoints the WAL); ``close_stale_connections`` closes it where work
    pauses. ``CONN_MAX_AGE`` > 0 is honoured here too. A connection inside ``atomic()``
    belongs to the caller (a test, eager mode in a view) and is left alone.
    """
    from django.db import connections

    now = time.monotonic()
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block or conn.connection is None:
            continue
        if conn.errors_occurred or verify:
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                conn.close()
                continue
        max_age = conn.settings_dict.get("CONN_MAX_AGE")
        if max_age and conn.close_at is not None and now >= conn.close_at:
            conn.close()


def connection_lost(instance: Any) -> bool:
    """After a database error: whether the connection ``instance`` was written through broke
    (the server went away), rather than the server refusing one statement."""
    from django.db import connections, router

    conn = connections[router.db_for_write(type(instance), instance=instance) or "default"]
    return conn.connection is None or not conn.is_usable()


def close_stale_connections() -> None:
    """Where work pauses: close database connections as Django does at a request's end.

    Called when the worker goes idle, after a Ray call and when a job ends, so that an idle
    process holds no connection ``CONN_MAX_AGE`` does not allow. A connection inside
    ``atomic()`` is left alone: it belongs to the caller (a test case, or
    ``call_command("django_ray_worker")`` run inside a transaction), and Django's
    ``close_old_connections()`` would close it mid-transaction.
    """
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()
