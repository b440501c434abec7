"""The messages a finished Celery-style task sends on: callbacks, the next chain step, errbacks
and a chord body, built by the one canvas builder (``django_ray.celery.canvas``).

The worker builds what a producer would have built: Celery routing
(``task_routes``, the task's queue, ``task_default_queue``), priority, eta/expires,
headers, pre-assigned ids, nested chords. Several ``link`` callbacks become one group, as
in Celery's tracer (``celery/app/trace.py``). Whoever sends a chord's header messages
stores the header size in the Celery result store, as Celery's ``apply_chord`` does: each
function takes the ``store`` to write it to (None: one that joins chords without it, such
as ``RecordStore``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from django_ray.celery.canvas import messages_from_signature
from django_ray.message import TaskMessage

logger = logging.getLogger(__name__)


class ResultStore(Protocol):
    """What a follow-up needs of a result store: a place for a chord's header size."""

    def set_chord_size(self, group_id: str, size: int) -> None: ...


__all__ = ["build", "chord_body", "errbacks", "on_success"]


def build(
    sig: Mapping[str, Any],
    *,
    parent: TaskMessage,
    prefix: Sequence[Any] = (),
    chain: Sequence[Mapping[str, Any]] | None = None,
    store: ResultStore | None,
) -> list[TaskMessage]:
    """Return the messages applying ``sig`` publishes after ``parent`` (``prefix`` prepended)."""
    if chain is None:  # never inherit the parent's chain by accident
        chain = list((sig.get("options") or {}).get("chain") or ())
    messages = list(messages_from_signature(sig, args_prefix=prefix, parent=parent, chain=chain))
    if store is not None:
        store_chord_sizes(store, messages)
    return messages


def on_success(message: TaskMessage, value: Any, *, store: ResultStore | None) -> list[TaskMessage]:
    """Return the ``link`` callbacks and next chain step of ``message``, given ``value``."""
    follow_ups = _callbacks(message, value, store)
    if message.chain:
        step, rest = message.chain[-1], message.chain[:-1]
        follow_ups += build(step, parent=message, prefix=(value,), chain=rest, store=store)
    return follow_ups


def errbacks(message: TaskMessage, *, store: ResultStore | None) -> list[TaskMessage]:
    """Return the ``link_error`` errbacks of ``message``, each called with its task id."""
    follow_ups: list[TaskMessage] = []
    for errback in message.errbacks:
        follow_ups += build(errback, parent=message, prefix=(message.id,), store=store)
    return follow_ups


def chord_body(
    message: TaskMessage, results: list[Any], *, store: ResultStore | None
) -> list[TaskMessage]:
    """Return the body of the chord ``message`` belongs to, called with the header ``results``."""
    assert message.chord is not None
    return build(message.chord, parent=message, prefix=(results,), store=store)


def store_chord_sizes(store: ResultStore, messages: Sequence[TaskMessage]) -> None:
    """Store in ``store`` the header size of each chord that ``messages`` (just built) start.

    Celery's backends join a chord's header by its stored size, which whoever sends the
    header stores (Celery's ``apply_chord``): the producer for a workflow it applies, the
    worker for a chord it sends on (a chord after a chain step, in a chord's body).
    """
    sizes = {
        m.group: int(m.chord.get("chord_size") or 0)
        for m in messages
        if m.chord is not None and m.group
    }
    for group_id, size in sizes.items():
        store.set_chord_size(group_id, size)


def _callbacks(message: TaskMessage, value: Any, store: ResultStore | None) -> list[TaskMessage]:
    callbacks = list(message.callbacks)

    def apply(sig: Mapping[str, Any]) -> list[TaskMessage]:
        return build(sig, parent=message, prefix=(value,), store=store)

    if len(callbacks) <= 1:
        return [m for sig in callbacks for m in apply(sig)]
    # Several callbacks: groups are applied on their own, task signatures as one group.
    tasks = [sig for sig in callbacks if not sig.get("subtask_type")]
    others = [sig for sig in callbacks if sig.get("subtask_type")]
    follow_ups = [m for sig in others for m in apply(sig)]
    if tasks:
        follow_ups += apply(_group(tasks))
    return follow_ups


def _group(tasks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "task": "celery.group",
        "args": [],
        "kwargs": {"tasks": [dict(t) for t in tasks]},
        "options": {},
        "subtask_type": "group",
        "immutable": False,
    }
