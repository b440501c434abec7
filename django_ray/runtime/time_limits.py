"""Interrupting a Celery-style attempt run in the worker's main thread: time limits and terminate.

``--sync`` runs a task in the worker process, so interrupts use ``SIGALRM``:

* at the soft limit ``SoftTimeLimitExceeded`` is raised inside the task (which may catch
  it to clean up);
* at the hard limit ``HardTimeLimit`` (a ``BaseException``, so ``except Exception`` in
  task code cannot swallow it) ends the attempt, and the executor stores FAILURE
  ``TimeLimitExceeded``;
* ``terminate(task_id)`` (a client's ``revoke(terminate=True)``, heard on the control
  thread) raises ``Terminated`` in the attempt, and the executor stores REVOKED.

Off the main thread, or without ``setitimer``, nothing is enforced here (the Ray runners
cancel the Ray task instead).
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)

__all__ = ["HardTimeLimit", "Terminated", "limit_exceptions", "terminate", "time_limits"]

_lock = threading.Lock()
_running: str | None = None  # the task id whose attempt runs in the main thread
_terminating = False


class SoftTimeLimitExceeded(Exception):
    """The soft time limit was reached (stand-in for billiard's, without Celery)."""


class TimeLimitExceeded(Exception):
    """The hard time limit was reached (stand-in for billiard's, without Celery)."""


class HardTimeLimit(BaseException):
    """Internal: raised in the main thread when an attempt passes its hard limit."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class Terminated(BaseException):
    """Internal: raised in the main thread when a client revoked the attempt with terminate."""


def limit_exceptions(*, celery: bool) -> tuple[type[Exception], type[Exception]]:
    """Return the (soft, hard) exception classes the task's own code knows.

    A real Celery task catches Celery's classes; a ``compat.celery`` task catches the
    ones ``compat.celery.exceptions`` exports (falling back to the stand-ins above).
    """
    modules = ["celery.exceptions"] if celery else ["compat.celery.exceptions"]
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        soft = getattr(module, "SoftTimeLimitExceeded", None)
        hard = getattr(module, "TimeLimitExceeded", None)
        if isinstance(soft, type) and isinstance(hard, type):
            return soft, hard
    return SoftTimeLimitExceeded, TimeLimitExceeded


def terminate(task_id: str) -> bool:
    """Interrupt the attempt of ``task_id`` if it runs in this process; return True if so."""
    global _terminating
    main = threading.main_thread().ident
    with _lock:
        if _running != task_id or main is None:
            return False
        _terminating = True
        signal.pthread_kill(main, signal.SIGALRM)
    return True


@contextmanager
def time_limits(
    hard: float | None, soft: float | None, *, soft_exc: type[Exception], task_id: str = ""
) -> Iterator[None]:
    """Enforce ``soft``/``hard`` (seconds) and ``terminate(task_id)`` inside this block."""
    global _running, _terminating
    if soft is not None and hard is not None and soft >= hard:
        soft = None
    on_main = threading.current_thread() is threading.main_thread()
    if not on_main or not hasattr(signal, "setitimer"):
        if soft or hard:
            logger.debug("Time limits are not enforced off the main thread.")
        yield
        return
    soft_fired = False

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal soft_fired
        if _terminating:
            raise Terminated()
        if soft is not None and not soft_fired:
            soft_fired = True
            if hard is not None:
                signal.setitimer(signal.ITIMER_REAL, max(hard - soft, 0.001))
            raise soft_exc()
        if hard is not None:
            raise HardTimeLimit(hard)

    with _lock:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        _running, _terminating = task_id or None, False
    if soft or hard:
        signal.setitimer(signal.ITIMER_REAL, soft or hard or 0)
    try:
        yield
    finally:
        _disarm(previous)


def _disarm(previous: object) -> None:
    global _running, _terminating
    while True:
        try:
            with _lock:
                _running, _terminating = None, False
                signal.setitimer(signal.ITIMER_REAL, 0)
                # A late signal must not kill the worker: never go back to SIG_DFL.
                keep = previous if callable(previous) else signal.SIG_IGN
                signal.signal(signal.SIGALRM, keep)
            return
        except (Terminated, HardTimeLimit, Exception):
            # The alarm fired while the attempt was already ending: it has ended.
            continue
