"""The one rebuild of an exception from what a record or a result store holds, safely.

A stored error names a class by its path (``exception_class_path``) and holds its
arguments. Our own errors are shown under Celery's names (``wire.CELERY_EXCEPTION_NAMES``).
The class is then looked up, in this order:

1. for Celery's exceptions, in ``celery_namespace`` if the caller gives one (``compat``
   passes its own ``compat.celery.exceptions``, so its clients catch its classes);
2. in a module this process has already imported (so a real Celery client gets Celery's
   own class when Celery is loaded);
3. else a stand-in class of the same name and module is made, as Celery does.

Nothing a stored string names is ever imported or called, and only ``Exception``
subclasses are rebuilt (a stored ``SystemExit`` comes back as a stand-in, never as the
real thing that would stop the process re-raising it).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from django_ray.celery.wire import CELERY_EXCEPTION_NAMES

__all__ = ["CELERY_MODULES", "celery_path", "exception_class", "rebuild", "rebuild_error"]

# The modules a real Celery worker (or our results mirror) stores Celery's exceptions under.
CELERY_MODULES = frozenset(module for module, _ in CELERY_EXCEPTION_NAMES.values()) | {
    "celery.exceptions"
}


def celery_path(path: str) -> str:
    """Return the path a Celery client knows the exception class at ``path`` by."""
    if path in CELERY_EXCEPTION_NAMES:
        return ".".join(CELERY_EXCEPTION_NAMES[path])
    return path


def exception_class(path: str, *, celery_namespace: ModuleType | None = None) -> type[Exception]:
    """Return the class for ``path`` (see the module docstring for where it is looked up)."""
    path = celery_path(path)
    module, _, name = path.rpartition(".")
    if celery_namespace is not None and module in CELERY_MODULES:
        cls = getattr(celery_namespace, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls
    return _loaded(path) or _stand_in(path)


def rebuild(
    path: str, args: Any = (), *, celery_namespace: ModuleType | None = None
) -> BaseException:
    """Return an instance of the class at ``path`` with ``args`` (a list, or one value)."""
    args = list(args) if isinstance(args, list | tuple) else ([] if args is None else [args])
    cls = exception_class(path, celery_namespace=celery_namespace)
    try:
        return cls(*args)
    except Exception:  # a class whose __init__ wants other arguments
        return _stand_in(celery_path(path))(*args)


def rebuild_error(
    error: Mapping[str, Any] | None, *, celery_namespace: ModuleType | None = None
) -> BaseException | None:
    """Rebuild the exception of a ``TaskRecord.errors`` entry (None for no entry)."""
    if not error:
        return None
    path = str(error.get("exception_class_path") or "builtins.Exception")
    return rebuild(path, error.get("exc_message"), celery_namespace=celery_namespace)


def _loaded(path: str) -> type[Exception] | None:
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        obj: Any = sys.modules.get(".".join(parts[:cut]))
        if obj is None:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
        return None
    return None


def _stand_in(path: str) -> type[Exception]:
    module, _, name = path.rpartition(".")
    name = name or "Exception"
    return type(name, (Exception,), {"__module__": module or "builtins", "__qualname__": name})
