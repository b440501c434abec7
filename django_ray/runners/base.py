"""The runner interface every execution mode implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from django_ray.message import TaskMessage
from django_ray.runtime.execute import Outcome

__all__ = ["BaseRunner", "Completion"]


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished submission: ``outcome`` is stored, or ``error`` says why it was not.

    ``error`` set means the runner itself failed (lost Ray connection, dead job): the
    outcome was not stored and the worker must give the message back to the broker.
    """

    message: TaskMessage
    delivery: Any
    outcome: Outcome | None = None
    error: BaseException | None = None


class BaseRunner(ABC):
    """Runs ``TaskMessage``s somewhere and reports their completions to the worker."""

    mode: ClassVar[str]

    def __init__(self, *, worker_id: str, concurrency: int | None = None, **options: Any) -> None:
        self.worker_id = worker_id
        self.concurrency = max(1, concurrency or 1)
        self.options = options

    def start(self) -> None:  # noqa: B027  (optional hook)
        """Acquire what the runner needs (a Ray connection, a job client)."""

    def describe(self) -> str:
        """Return one line for the worker's start-up log."""
        return f"mode={self.mode} concurrency={self.concurrency}"

    @abstractmethod
    def submit(self, message: TaskMessage, delivery: Any) -> None:
        """Start running ``message``; ``delivery`` comes back with its completion."""

    @abstractmethod
    def poll(self, timeout: float = 0) -> list[Completion]:
        """Return the submissions that finished, waiting up to ``timeout`` seconds."""

    @abstractmethod
    def in_flight(self) -> int:
        """Return how many submissions have not finished yet."""

    def has_capacity(self) -> bool:
        return self.in_flight() < self.concurrency

    def terminate(self, task_id: str) -> bool:
        """Stop the running attempt of ``task_id`` (a client's ``revoke(terminate=True)``).

        Called from the control thread, so it must be thread-safe. Return True if an
        attempt of ``task_id`` was running here; its outcome is then REVOKED "terminated".
        """
        return False

    def shutdown(self, *, wait: bool = True) -> None:  # noqa: B027  (optional hook)
        """Release resources; with ``wait`` let running work finish first."""
