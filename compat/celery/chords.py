"""The client's part of a chord: check the worker can join it, and store the header size.

As with Celery, the worker joins a chord's header through the Celery result backend
(``CELERY_RESULT_BACKEND``), and the *client* writes the header size there when it applies
the chord (Celery's ``backend.set_chord_size``, the ``celery-taskset-meta-<gid>.s`` key).
A chord the worker could not complete is refused here rather than left to hang.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compat.celery.exceptions import NotSupported

__all__ = ["prepare_chords"]


def prepare_chords(frozen: Mapping[str, Any]) -> None:
    """Store the size of the chord ``frozen`` starts with; refuse chords we cannot complete."""
    head, later = _split(frozen)
    if head is None and not later:
        return
    if later:
        raise NotSupported(
            "A chord after the first step of a chain, or inside a chord body, is not supported "
            "by compat.celery yet; start the chain with the chord instead."
        )
    assert head is not None
    from django_ray import results

    store = results.store()
    if store is None:
        raise NotSupported(
            "chord() needs a Celery result backend for the worker to join its header: "
            "set CELERY_RESULT_BACKEND (e.g. 'redis://localhost:6379/0')."
        )
    header = head["kwargs"]["header"]
    _set_chord_size(store, header["options"]["task_id"], len(header["kwargs"]["tasks"]))


def _split(sig: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, bool]:
    """Return (the chord applied first, whether another chord comes later)."""
    kind = sig.get("subtask_type")
    if kind == "chain":
        steps = sig["kwargs"]["tasks"]
        head, later = _split(steps[0])
        return head, later or any(_contains_chord(s) for s in steps[1:])
    if kind == "chord":
        return sig, _contains_chord(sig["kwargs"]["body"])
    return None, False


def _contains_chord(sig: Mapping[str, Any]) -> bool:
    if sig.get("subtask_type") == "chord":
        return True
    return any(_contains_chord(t) for t in (sig.get("kwargs") or {}).get("tasks") or ())


def _set_chord_size(store: Any, group_id: str, size: int) -> None:
    if not size:  # an empty header: the body is sent at once, nothing to join
        return
    if hasattr(store, "set_chord_size"):
        store.set_chord_size(group_id, size)
    elif hasattr(store, "backend"):  # the project's real Celery app backend
        store.backend.set_chord_size(group_id, size)
    elif hasattr(store, "client"):  # Celery's Redis format: the key its client writes
        expires = getattr(store, "expires", None) or None
        store.client.set(f"celery-taskset-meta-{group_id}.s", size, ex=expires)
    else:
        raise NotSupported(f"The result store {store!r} cannot join chords.")
