"""Celery-format results for unchanged Celery clients, and the revoked-id set.

Placeholder until the Celery result backend lands: nothing is mirrored and nothing is
revoked.
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_revoked", "mirror"]


def mirror(record: Any, message: Any) -> None:
    """Write ``record``'s state where a Celery client's ``AsyncResult`` looks for it."""


def is_revoked(task_id: str) -> bool:
    """Return True if ``task_id`` was revoked before it started."""
    return False
