"""``Context``: the ``self.request`` of a running task, as Celery fills it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_ray.message import TaskMessage

__all__ = ["Context"]


class Context:
    """Task request variables (``Task.request``), an attribute bag like Celery's.

    The worker pushes one per execution with ``Task.push_request(**fields)``. Besides
    Celery's fields it may carry ``message``: the ``TaskMessage`` being run, which
    ``Task.retry()`` copies for the next attempt (without it, the retry message is
    rebuilt from the other fields).
    """

    id: str | None = None
    args: tuple[Any, ...] | list[Any] | None = None
    kwargs: Mapping[str, Any] | None = None
    retries: int = 0
    is_eager: bool = False
    called_directly: bool = True
    root_id: str | None = None
    parent_id: str | None = None
    correlation_id: str | None = None
    delivery_info: Mapping[str, Any] | None = None
    hostname: str | None = None
    headers: Mapping[str, Any] | None = None
    group: str | None = None
    group_index: int | None = None
    chain: list[dict[str, Any]] | tuple[dict[str, Any], ...] | None = None
    callbacks: list[dict[str, Any]] | tuple[dict[str, Any], ...] | None = None
    errbacks: list[dict[str, Any]] | tuple[dict[str, Any], ...] | None = None
    chord: dict[str, Any] | None = None
    timelimit: tuple[float | None, float | None] | list[float | None] | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    eta: str | None = None
    expires: str | None = None
    ignore_result: bool = False
    origin: str | None = None
    reply_to: str | None = None
    shadow: str | None = None
    message: TaskMessage | None = None

    def __init__(self, *args: Mapping[str, Any], **kwargs: Any) -> None:
        self.update(*args, **kwargs)

    def update(self, *args: Mapping[str, Any], **kwargs: Any) -> None:
        self.__dict__.update(*args, **kwargs)
        if "timelimit" in kwargs or any("timelimit" in a for a in args):
            limits = self.timelimit
            if isinstance(limits, list | tuple) and len(limits) == 2:
                self.time_limit, self.soft_time_limit = limits[0], limits[1]

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def clear(self) -> None:
        self.__dict__.clear()

    @property
    def taskset(self) -> str | None:
        """Celery's old name for ``group``."""
        return self.group

    def __repr__(self) -> str:
        return f"<Context: {vars(self)!r}>"
