"""The one way a test waits: on a state it can observe, never on a fixed sleep.

A test that sleeps "long enough" is wrong on a slow machine and slow on a fast one. Instead
it names what it waits for (a record's status, a marker file, a worker's log line) and
polls for it with ``wait_until``, which returns as soon as it holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until[T](
    predicate: Callable[[], T],
    what: str,
    *,
    timeout: float = 10,
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> T:
    """Return ``predicate()``'s first truthy value, asking again every ``interval`` seconds.

    After ``timeout`` seconds fail with an ``AssertionError`` that names ``what`` was awaited
    (and ends with ``details()``, e.g. a worker's log). An exception raised by ``predicate``
    propagates at once: a predicate can give up early, e.g. when the process it watches died.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = f"Timed out after {timeout:g} s waiting for {what}."
            if details is not None:
                message = f"{message}\n{details()}"
            raise AssertionError(message)
        time.sleep(interval)
