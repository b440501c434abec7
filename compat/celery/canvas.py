"""Signatures and workflows: ``signature``, ``chain``, ``group``, ``chord``.

A ``Signature`` is a dict (``task``, ``args``, ``kwargs``, ``options``, ``subtask_type``,
``immutable``) exactly as Celery puts it on the wire. Applying one freezes it (every task
gets its id), turns it into ``TaskMessage``s (``compat.celery.workflow``) and sends them
(``compat.celery.producer``); the worker continues the workflow from the messages alone.
``message_from_signature`` / ``messages_from_signature`` are re-exported here for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from django_ray.celery.canvas import freeze, message_from_signature, messages_from_signature, plain

if TYPE_CHECKING:
    from compat.celery.result import AsyncResult, GroupResult

__all__ = [
    "Signature",
    "chain",
    "chord",
    "group",
    "maybe_signature",
    "message_from_signature",
    "messages_from_signature",
    "signature",
    "subtask",
]


class Signature(dict[str, Any]):
    """A task call to make later: ``add.s(2, 2)``, ``add.si(2, 2)``, ``signature("x.add")``."""

    TYPES: dict[str, type[Signature]] = {}

    def __init__(
        self,
        task: Any = None,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        type: Any = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Any = None,
        **ex: Any,
    ) -> None:
        if isinstance(task, Mapping):
            super().__init__(task)
            return
        name = task if isinstance(task, str) else getattr(task or type, "name", None)
        super().__init__(
            task=name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options={**(options or {}), **ex},
            subtask_type=subtask_type,
            immutable=immutable,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Any = None) -> Signature:
        """Return the Signature class matching ``d['subtask_type']`` built from ``d``."""
        return cls.TYPES.get(d.get("subtask_type") or "", Signature)(dict(d))

    # -- fields -------------------------------------------------------------------

    @property
    def task(self) -> str:
        return str(self["task"])

    name = task

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self.get("args") or ())

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.get("kwargs") or {})

    @property
    def options(self) -> dict[str, Any]:
        return self.setdefault("options", {})  # type: ignore[no-any-return]

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def subtask_type(self) -> str | None:
        return self.get("subtask_type")

    @property
    def id(self) -> str | None:
        return self.options.get("task_id")

    @property
    def type(self) -> Any:
        """Return the compat task this signature calls (``NotRegistered`` if unknown)."""
        from compat.celery.decorators import lookup_task
        from compat.celery.exceptions import NotRegistered

        task = lookup_task(self.task)[1]
        if task is None:
            raise NotRegistered(self.task)
        return task

    # -- building -----------------------------------------------------------------

    def clone(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """Return a copy with ``args`` prepended (unless immutable) and kwargs/options merged."""
        copy = self.from_dict(plain(self))
        if not self.immutable:
            copy["args"] = [*(args or ()), *copy.args]
            copy["kwargs"] = {**copy.kwargs, **(kwargs or {})}
        copy.options.update(options)
        return copy

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Call ``callback`` with this task's result after it succeeds."""
        self.options["link"] = [*(self.options.get("link") or ()), callback]
        return callback

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Call ``errback`` (with the failed task's id) if this task fails."""
        self.options["link_error"] = [*(self.options.get("link_error") or ()), errback]
        return errback

    on_error = link_error

    # Celery's ``|`` builds chains, not merged dicts.
    def __or__(self, other: Any) -> chain:  # type: ignore[override]
        """Chain two signatures (chains are spliced): ``add.s(1) | mul.s(2)``."""
        if not isinstance(other, Signature):
            return NotImplemented
        return chain(*_steps(self), *_steps(other))

    __ior__ = __or__  # type: ignore[assignment]

    # -- calling ------------------------------------------------------------------

    def freeze(self, _id: str | None = None, **_: Any) -> AsyncResult | GroupResult:
        """Assign the task ids now (in place) and return the result to expect."""
        from compat.celery.producer import result_from_signature

        if _id:
            self.options.setdefault("task_id", _id)
        self.update(freeze(self))
        return result_from_signature(self)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the task (or workflow) to the broker and return its result."""
        return self._send(args, kwargs, options, eager=None)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run the task (or workflow) now, in this process, through the sync runner."""
        return self._send(args, kwargs, options, eager=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function directly (no message, no record)."""
        call_args = self.args if self.immutable else (*args, *self.args)
        return self.type(*call_args, **{**self.kwargs, **kwargs})

    def _send(
        self,
        args: Iterable[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
        *,
        eager: bool | None,
    ) -> Any:
        from compat.celery.producer import send_signature

        sig = dict(self)
        sig["options"] = {**self.options, **options}
        return send_signature(sig, args=tuple(args or ()), kwargs=kwargs or {}, eager=eager)

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}({args}){'!' if self.immutable else ''}"


class chain(Signature):
    """Run tasks one after another, each getting the previous result: ``chain(a.s(), b.s())``."""

    def __init__(self, *tasks: Any, **options: Any) -> None:
        if _is_type(tasks, "chain"):
            super().__init__(tasks[0])
            return
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            tasks = tuple(tasks[0])
        super().__init__(
            "celery.chain",
            (),
            {"tasks": [maybe_signature(t) for t in tasks]},
            options,
            subtask_type="chain",
        )

    @property
    def tasks(self) -> list[Signature]:
        return [Signature.from_dict(t) for t in self["kwargs"]["tasks"]]

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)


class group(Signature):
    """Run tasks in parallel; ``GroupResult.get()`` returns their results in order."""

    def __init__(self, *tasks: Any, **options: Any) -> None:
        if _is_type(tasks, "group"):
            super().__init__(tasks[0])
            return
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            tasks = tuple(tasks[0])
        super().__init__(
            "celery.group",
            (),
            {"tasks": [maybe_signature(t) for t in tasks]},
            options,
            subtask_type="group",
        )

    @property
    def tasks(self) -> list[Signature]:
        return [Signature.from_dict(t) for t in self["kwargs"]["tasks"]]

    def __len__(self) -> int:
        return len(self["kwargs"]["tasks"])


class chord(Signature):
    """Run ``header`` (a group) in parallel, then ``body`` once with the list of results."""

    def __init__(self, header: Any, body: Any = None, **options: Any) -> None:
        if isinstance(header, Mapping) and header.get("subtask_type") == "chord":
            super().__init__(header)
            return
        header = header if isinstance(header, group) else group(header)
        super().__init__(
            "celery.chord",
            (),
            {"header": header, "body": maybe_signature(body)},
            options,
            subtask_type="chord",
        )

    @property
    def header(self) -> group:
        return group(self["kwargs"]["header"])

    @property
    def body(self) -> Signature | None:
        return maybe_signature(self["kwargs"].get("body"))

    def __call__(self, body: Any = None, **options: Any) -> Any:  # type: ignore[override]
        """Apply the chord, with ``body`` if it was not given to the constructor."""
        sig = chord(self)
        if body is not None:
            sig["kwargs"] = {**sig["kwargs"], "body": maybe_signature(body)}
        if sig["kwargs"].get("body") is None:
            raise TypeError("chord() needs a body: chord(header)(body) or chord(header, body).")
        return sig.apply_async(**options)


Signature.TYPES.update({"chain": chain, "group": group, "chord": chord})


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """Return a Signature: a copy of one, one built from a dict, or a new one for a name."""
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, Mapping):
        return Signature.from_dict(varies)
    return Signature(varies, *args, **kwargs)


subtask = signature


def maybe_signature(d: Any, app: Any = None, clone: bool = False) -> Any:
    """Return ``d`` as a Signature (``None`` stays ``None``)."""
    if d is None or (isinstance(d, Signature) and not clone):
        return d
    return signature(d)


def _steps(sig: Signature) -> list[Signature]:
    return sig.tasks if isinstance(sig, chain) else [sig]


def _is_type(args: tuple[Any, ...], kind: str) -> bool:
    """Return True for ``(sig_dict,)`` of type ``kind`` (rebuilding a class from its dict)."""
    return len(args) == 1 and isinstance(args[0], Mapping) and args[0].get("subtask_type") == kind
