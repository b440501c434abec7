"""The messages a finished Celery-style task sends on: callbacks, the next chain step, errbacks
and a chord body, built by the one canvas builder (``django_ray.celery.canvas``).

The worker builds what a producer would have built: Celery routing
(``task_routes``, the task's queue, ``task_default_queue``), priority, eta/expires,
headers, pre-assigned ids, nested chords. Several ``link`` callbacks become one group, as
in Celery's tracer (``celery/app/trace.py``). Whoever sends a chord's header messages
stores the header size in the Celery result store, as Celery's ``apply_chord`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django_ray.message import TaskMessage

logger = logging.getLogger(__name__)

__all__ = ["build", "chord_body", "errbacks", "on_success"]


def build(
    sig: Mapping[str, Any],
    *,
    parent: TaskMessage,
    prefix: Sequence[Any] = (),
    chain: Sequence[Mapping[str, Any]] | None = None,
) -> list[TaskMessage]:
    """Return the messages applying ``sig`` publishes after ``parent`` (``prefix`` prepended)."""
    from django_ray.celery import results
    from django_ray.celery.canvas import messages_from_signature

    if chain is None:  # never inherit the parent's chain by accident
        chain = list((sig.get("options") or {}).get("chain") or ())
    messages = list(messages_from_signature(sig, args_prefix=prefix, parent=parent, chain=chain))
    results.store_chord_sizes(messages)
    return messages


def on_success(message: TaskMessage, value: Any) -> list[TaskMessage]:
    """Return the ``link`` callbacks and next chain step of ``message``, given ``value``."""
    follow_ups = _callbacks(message, value)
    if message.chain:
        step, rest = message.chain[-1], message.chain[:-1]
        follow_ups += build(step, parent=message, prefix=(value,), chain=rest)
    return follow_ups


def errbacks(message: TaskMessage) -> list[TaskMessage]:
    """Return the ``link_error`` errbacks of ``message``, each called with its task id."""
    follow_ups: list[TaskMessage] = []
    for errback in message.errbacks:
        follow_ups += build(errback, parent=message, prefix=(message.id,))
    return follow_ups


def chord_body(message: TaskMessage, results: list[Any]) -> list[TaskMessage]:
    """Return the body of the chord ``message`` belongs to, called with the header ``results``."""
    assert message.chord is not None
    return build(message.chord, parent=message, prefix=(results,))


def _callbacks(message: TaskMessage, value: Any) -> list[TaskMessage]:
    callbacks = list(message.callbacks)
    if len(callbacks) <= 1:
        return [m for sig in callbacks for m in build(sig, parent=message, prefix=(value,))]
    # Several callbacks: groups are applied on their own, task signatures as one group.
    tasks = [sig for sig in callbacks if not sig.get("subtask_type")]
    others = [sig for sig in callbacks if sig.get("subtask_type")]
    follow_ups = [m for sig in others for m in build(sig, parent=message, prefix=(value,))]
    if tasks:
        follow_ups += build(_group(tasks), parent=message, prefix=(value,))
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
