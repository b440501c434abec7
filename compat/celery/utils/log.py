"""``get_task_logger`` and ``get_logger``, as task modules import them from ``celery.utils.log``."""

from __future__ import annotations

import logging

__all__ = ["get_logger", "get_task_logger"]


def get_logger(name: str) -> logging.Logger:
    """Return the standard logger ``name``."""
    return logging.getLogger(name)


def get_task_logger(name: str) -> logging.Logger:
    """Return the logger for a task module (a child of ``celery.task``, as in Celery)."""
    logger = logging.getLogger(name)
    if logger.parent is logging.getLogger():
        logger.parent = logging.getLogger("celery.task")
    return logger
