"""Rebuild a task's exception from its ``TaskRecord.errors`` entry, safely.

The class is looked up only in modules this process has already imported and must be an
``Exception`` subclass; otherwise a stand-in class of the same name is made (as Celery
does). Nothing a stored string names is ever imported or called.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from compat.celery import exceptions
from django_ray.celery_format import CELERY_EXCEPTION_NAMES

__all__ = ["ALIASES", "exception_from_error"]

# Errors django-ray stores under its own class paths, shown as Celery's exceptions (compat's
# classes of the same names).
ALIASES: dict[str, type[BaseException]] = {
    ours: getattr(exceptions, name) for ours, (_, name) in CELERY_EXCEPTION_NAMES.items()
}
# A real Celery worker (or our results mirror) stores Celery's own exceptions by these paths.
CELERY_MODULES = tuple(sorted({module for module, _ in CELERY_EXCEPTION_NAMES.values()}))


def exception_from_error(error: Mapping[str, Any] | None) -> BaseException:
    """Rebuild the exception described by a ``TaskRecord.errors`` entry."""
    if not error:
        return exceptions.TaskError("The task failed without recording an error.")
    path = str(error.get("exception_class_path") or "builtins.Exception")
    cls = _exception_class(path)
    args = error.get("exc_message")
    args = list(args) if isinstance(args, list | tuple) else ([] if args is None else [args])
    try:
        return cls(*args)
    except Exception:  # a class whose __init__ wants other arguments
        return _stand_in(path)(*args)


def _exception_class(path: str) -> type[BaseException]:
    if path in ALIASES:
        return ALIASES[path]
    module, _, name = path.rpartition(".")
    if module in CELERY_MODULES and isinstance(getattr(exceptions, name, None), type):
        return getattr(exceptions, name)  # type: ignore[no-any-return]
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        obj: Any = sys.modules.get(".".join(parts[:cut]))
        if obj is None:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
        break
    return _stand_in(path)


def _stand_in(path: str) -> type[Exception]:
    module, _, name = path.rpartition(".")
    return type(name or "Exception", (Exception,), {"__module__": module or "builtins"})
