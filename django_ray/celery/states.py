"""Celery's task states, with the same strings, sets and precedence as ``celery.states``."""

from __future__ import annotations

__all__ = [
    "ALL_STATES",
    "EXCEPTION_STATES",
    "FAILURE",
    "IGNORED",
    "PENDING",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "REJECTED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNREADY_STATES",
    "precedence",
    "state",
]

#: The id is unknown, or the task has not run yet.
PENDING = "PENDING"
#: Received by a worker (events only; never stored).
RECEIVED = "RECEIVED"
#: Started by a worker.
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
#: Revoked, or expired before it ran.
REVOKED = "REVOKED"
#: Rejected (events only; never stored).
REJECTED = "REJECTED"
#: Waiting for another attempt.
RETRY = "RETRY"
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})

# Lower index means higher precedence; None stands for any custom state.
PRECEDENCE: list[str | None] = [
    SUCCESS,
    FAILURE,
    None,
    REVOKED,
    STARTED,
    RECEIVED,
    REJECTED,
    RETRY,
    PENDING,
]
_LOOKUP = {name: index for index, name in enumerate(PRECEDENCE)}


def precedence(state: str) -> int:
    """Return the precedence index of ``state`` (lower is higher)."""
    return _LOOKUP.get(state, _LOOKUP[None])


class state(str):
    """A state string that compares by precedence: ``state(PENDING) < state(SUCCESS)``."""

    __slots__ = ()

    def __gt__(self, other: str) -> bool:
        return precedence(self) < precedence(other)

    def __ge__(self, other: str) -> bool:
        return precedence(self) <= precedence(other)

    def __lt__(self, other: str) -> bool:
        return precedence(self) > precedence(other)

    def __le__(self, other: str) -> bool:
        return precedence(self) >= precedence(other)
