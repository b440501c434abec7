"""How the core writes a task's values: its result as JSON, an error as a record's entry.

Used by the adapters (a result that cannot be made JSON fails the task) and by settle (the
``TaskRecord.errors`` entry of every failure, in the shape ``compat`` and the admin read).
"""

from __future__ import annotations

import json
import traceback
from typing import Any

__all__ = ["error_info", "json_result"]


def error_info(exc: BaseException) -> dict[str, Any]:
    """Describe ``exc`` as stored in ``TaskRecord.errors``."""
    cls = type(exc)
    return {
        "exception_class_path": f"{cls.__module__}.{cls.__qualname__}",
        "traceback": "".join(traceback.format_exception(exc)),
        "exc_message": _json_safe(list(exc.args)),
    }


def json_result(value: Any) -> Any:
    """Return ``value`` as it reads back from JSON, or raise ``TypeError``."""
    from django.utils.json import normalize_json

    try:
        return json.loads(json.dumps(normalize_json(value), allow_nan=False))
    except ValueError as e:
        raise TypeError(f"Task return value is not JSON-serializable: {e}") from e
    except RecursionError:
        raise TypeError("Task return value is not JSON-serializable: nested too deeply.") from None


def _json_safe(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return [repr(v) for v in value] if isinstance(value, list) else repr(value)
