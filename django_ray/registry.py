"""Name -> task lookup: the allowlist of what a worker may run.

A message names a task; the worker runs it only if the name resolves here:

* a Django ``@task`` declared with our backend, by its ``module_path``;
* a task registered by name (``compat.celery`` tasks, and Celery's built-ins
  ``celery.starmap``/``celery.map`` when there is no Celery app to provide them);
* a task of the project's real Celery app (``DJANGO_RAY["CELERY_APP"]``), by its Celery name.

A name is never imported: a message can only name a task of a module the worker's set-up
already loaded (``autodiscover``: ``<installed app>.tasks``, ``TASK_MODULES``, the Celery
app's ``include``/``imports``/autodiscovery). Tasks that live elsewhere (``myapp.jobs``)
are found once their module is listed in ``TASK_MODULES``.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from django.apps import apps
from django.tasks import Task
from django.utils.module_loading import import_string

from django_ray import conf
from django_ray.builtins import builtin_tasks
from django_ray.exceptions import ImproperlyConfiguredRay, NotRegistered

logger = logging.getLogger(__name__)

__all__ = ["Entry", "autodiscover", "register", "resolve"]

Kind = Literal["django", "celery"]

_named: dict[str, Any] = {}
_django_names: set[str] = set()
_lock = threading.Lock()
_discovered = False


@dataclass(frozen=True, slots=True)
class Entry:
    """A resolved task: ``kind`` says which execution path runs ``obj``."""

    name: str
    kind: Kind
    obj: Any


def register(name: str, obj: Any) -> None:
    """Register a Celery-style task object under ``name``."""
    _named[name] = obj


def register_django_task(task: Task) -> None:
    """Note that the module-level Django task at ``task.module_path`` may be run."""
    _django_names.add(task.module_path)


def autodiscover() -> None:
    """Import every ``<app>.tasks`` module, the ``TASK_MODULES`` and the Celery app's tasks.

    A module that fails to import raises ``ImproperlyConfiguredRay`` naming it, where it
    comes from and the cause, so that a worker stops at start with that one message.
    """
    global _discovered
    with _lock:
        if _discovered:
            return
        for config in apps.get_app_configs():
            module = f"{config.name}.tasks"
            with _loading(module, f"task module {module!r} of the installed app {config.label!r}"):
                import_optional(module)
        for module in conf.get("TASK_MODULES"):
            with _loading(module, f"task module {module!r} in DJANGO_RAY['TASK_MODULES']"):
                importlib.import_module(module)
        path = conf.get("CELERY_APP")
        app = None
        with _loading(path or "", f"Celery app {path!r} of DJANGO_RAY['CELERY_APP']"):
            app = celery_app()
            if app is not None:
                app.loader.import_default_modules()
                app.autodiscover_tasks(lambda: [c.name for c in apps.get_app_configs()], force=True)
        if app is None:
            _register_builtins()
        _discovered = True


@contextmanager
def _loading(module: str, what: str) -> Iterator[None]:
    """Re-raise an error while loading ``what`` as ``ImproperlyConfiguredRay`` naming it."""
    try:
        yield
    except ImproperlyConfiguredRay:
        raise
    except Exception as e:
        missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
        if missing and (module == missing or module.startswith(f"{missing}.")):
            headline = f"The {what} does not exist: correct the name or remove it."
            cause = _cause(e, located=False)
        else:
            headline = f"The {what} failed to import: fix the cause below."
            cause = _cause(e)
        raise ImproperlyConfiguredRay(f"{headline}\n  Cause: {cause}") from e


def _cause(error: BaseException, *, located: bool = True) -> str:
    """Return ``error`` as ``Type: message (file, line N)``, the place where it was raised."""
    if isinstance(error, SyntaxError):
        return f"{type(error).__name__}: {error.msg} ({error.filename}, line {error.lineno})"
    text = "".join(traceback.format_exception_only(error)).strip()
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "<frozen" not in f.filename]
    if not located or not frames:
        return text
    return f"{text} ({frames[-1].filename}, line {frames[-1].lineno})"


def resolve(name: str) -> Entry:
    """Return the task registered as ``name``, or raise ``NotRegistered``."""
    if name in _named:
        return Entry(name, "celery", _named[name])
    if name in {"celery.starmap", "celery.map"} and celery_app() is None:
        # A process that never ran autodiscover() (a Ray worker, a job entrypoint).
        _register_builtins()
        return Entry(name, "celery", _named[name])
    task = _django_task(name)
    if task is not None:
        return Entry(name, "django", task)
    app = celery_app()
    if app is not None and name in app.tasks and not _is_celery_internal(name):
        return Entry(name, "celery", app.tasks[name])
    if name in _named:  # registered while importing its module above
        return Entry(name, "celery", _named[name])
    raise NotRegistered(f"Task {name!r} is not registered. Did you forget to import its module?")


def known_names() -> list[str]:
    """Return every name this process can resolve (for logs and the CLI)."""
    names = set(_named) | _django_names
    app = celery_app()
    if app is not None:
        names |= {n for n in app.tasks if not _is_celery_internal(n)}
    return sorted(names)


def celery_app() -> Any | None:
    """Return the project's real Celery app, if ``DJANGO_RAY["CELERY_APP"]`` names one."""
    path = conf.get("CELERY_APP")
    if not path:
        return None
    app = import_string(path)
    return app


def _django_task(name: str) -> Task | None:
    """Return the Django task ``name`` if its module was loaded as a task module.

    Nothing is imported here: a name is only looked up in a module that set-up already
    imported (``autodiscover``: installed apps' ``tasks``, ``TASK_MODULES``) and that
    declared the task with our backend (``register_django_task``).
    """
    if name not in _django_names:
        return None
    module_name, _, attr = name.rpartition(".")
    obj: Any = sys.modules.get(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, Task) and obj.module_path == name else None


def import_optional(module_name: str) -> None:
    """Import ``module_name`` if it exists; a missing import inside it still raises."""
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # the module exists but one of its imports is missing
            raise


def _register_builtins() -> None:
    """Register Celery's ``celery.starmap`` and ``celery.map`` (no Celery app provides them)."""
    for name, task in builtin_tasks(resolve).items():
        register(name, task)


def _is_celery_internal(name: str) -> bool:
    return name.startswith("celery.") and name not in {"celery.starmap", "celery.map"}
