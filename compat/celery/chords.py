"""The client's part of a chord: store the header size where the worker joins the header.

With a Celery result backend (``CELERY_RESULT_BACKEND``) the worker joins a chord's header
there, and, as a Celery client does (``backend.set_chord_size``, the
``celery-taskset-meta-<gid>.s`` key), whoever sends the header stores its size: this
module for the chord a workflow starts with, the worker for a chord it sends later (a
chord after the first step of a chain, or a chord in a chord's body). Without a result
backend nothing is stored: the worker joins the header through the ``TaskRecord`` rows
created with the header messages (``django_ray.celery.chords``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["prepare_chords"]


def prepare_chords(frozen: Mapping[str, Any]) -> None:
    """Store the header size of the chord the frozen workflow ``frozen`` starts with."""
    head = _first_chord(frozen)
    if head is None:
        return
    header = head["kwargs"]["header"]
    size = len(header["kwargs"]["tasks"])
    if not size:  # an empty header: the body is sent at once, nothing to join
        return
    from django_ray.celery import results

    results.store().set_chord_size(header["options"]["task_id"], size)


def _first_chord(sig: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the chord applied when ``sig`` is sent (a chain's first step), if any."""
    kind = sig.get("subtask_type")
    if kind == "chain":
        return _first_chord(sig["kwargs"]["tasks"][0])
    return sig if kind == "chord" else None
