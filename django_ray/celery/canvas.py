"""Canvas on the wire: freeze signature dicts and turn them into ``TaskMessage``s.

Producers (``compat``'s ``Signature.apply_async``) and the worker (after a task finishes:
the next chain step, callbacks, a chord body: ``celery.follow_ups``) use the same
functions, so a workflow is encoded one way only, as Celery encodes it:

* chain: one message for the first step, whose ``embed.chain`` lists the remaining
  steps *reversed* (the next one last), each with its pre-assigned ``options.task_id``;
  a group followed by another step becomes a chord, as in Celery;
* group: one message per member, headers ``group`` = the group id, ``group_index`` = i;
* chord: one message per header member (group headers as above) whose ``embed.chord``
  is the body signature with ``options.task_id``, ``options.group_id`` and the header
  size as ``chord_size``; a chain step after a chord travels in the body's
  ``options.chain``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from django_ray.celery import client
from django_ray.celery.send import build_message
from django_ray.message import TaskMessage, new_task_id

__all__ = [
    "chain_steps",
    "freeze",
    "message_from_signature",
    "messages_from_signature",
    "plain",
    "with_kwargs",
]

Sig = dict[str, Any]


def freeze(signature: Mapping[str, Any]) -> Sig:
    """Return a plain copy of ``signature`` in which every task has its ``options.task_id``."""
    sig: Sig = plain(signature)
    kind = sig.get("subtask_type")
    options = sig.setdefault("options", {})
    if kind == "chain":
        sig["kwargs"]["tasks"] = chain_steps(sig)
        # Options given to the chain itself now sit on its steps (see chain_steps).
        sig["options"] = {}
    elif kind == "group":
        options.setdefault("task_id", new_task_id())
        sig["kwargs"]["tasks"] = [freeze(_plain_task(t, "group")) for t in _members(sig)]
    elif kind == "chord":
        header = sig["kwargs"]["header"]
        if not isinstance(header, Mapping):  # a plain list of header tasks
            header = _group(header, new_task_id())
        tasks, group_id = header["kwargs"]["tasks"], (header.get("options") or {}).get("task_id")
        body = plain(sig["kwargs"]["body"])
        body_id = options.pop("task_id", None)
        # apply_async(task_id=) names the body, unless the body is frozen already (then the
        # chord's id is its header's group id, as in a chord Celery froze).
        if body_id and not (body.get("options") or {}).get("task_id"):
            body.setdefault("options", {})["task_id"] = body_id
        # As in Celery: callbacks of the chord hang on its body, other options on the header.
        for key in ("link", "link_error"):
            if options.get(key):
                _extend(body, key, options.pop(key))
        header_sig = _group(tasks, group_id or new_task_id())
        header_sig["options"].update(options)
        sig["options"] = {}
        sig["kwargs"]["header"], sig["kwargs"]["body"] = freeze(header_sig), freeze(body)
    elif kind:
        raise client.unsupported(f"Signature type {kind!r} is not supported by django-ray.")
    else:
        options.setdefault("task_id", new_task_id())
    return sig


def chain_steps(sig: Mapping[str, Any]) -> list[Sig]:
    """Return the frozen steps of a chain: nested chains spliced, ``group | s`` made a chord.

    The chain's own options go where Celery puts them: ``link`` on the last step,
    ``link_error`` on every step, ``task_id`` on the last step, the rest on the first.
    """
    steps = _splice(_members(sig))
    upgraded: list[Sig] = []
    for step in steps:
        if upgraded and upgraded[-1].get("subtask_type") == "group":
            header = upgraded.pop()
            step = _chord(header, step)
        upgraded.append(step)
    if not upgraded:
        raise ValueError("A chain needs at least one task.")
    options = dict(sig.get("options") or {})
    link, link_error = options.pop("link", None), options.pop("link_error", None)
    last_id = options.pop("task_id", None)
    if last_id:
        upgraded[-1].setdefault("options", {})["task_id"] = last_id
    if options:
        upgraded[0]["options"] = {**(upgraded[0].get("options") or {}), **options}
    for step in upgraded:
        if link_error:
            _extend(step, "link_error", link_error)
    if link:
        _extend(upgraded[-1], "link", link)
    return [freeze(step) for step in upgraded]


def message_from_signature(
    sig: Mapping[str, Any],
    *,
    args_prefix: Sequence[Any] = (),
    parent: TaskMessage | None = None,
    chain: Sequence[Mapping[str, Any]] | None = None,
) -> TaskMessage:
    """Return the one message that applying the task signature ``sig`` publishes.

    ``sig`` is a signature dict as Celery puts it on the wire (``task``, ``args``,
    ``kwargs``, ``options``, ``immutable``), or a chain of them (its first step is built).

    * ``args_prefix`` is prepended to the signature's args unless it is immutable
      (``.si()``): pass ``(retval,)`` for a chain step or a ``link`` callback.
    * ``parent`` is the message that just finished: the new message gets
      ``parent_id = parent.id`` and ``root_id = parent.root_id`` (and ``parent.priority``
      with ``task_inherit_parent_priority``, unless the signature sets one).
    * ``options``: ``task_id`` is kept (so ``AsyncResult.parent`` works), ``queue`` and
      ``priority`` (Celery 0-9) are honoured, else the task's own queue/priority, the
      ``task_routes`` and ``task_default_queue``; ``link``/``link_error``, ``chord``,
      ``group_id``/``group_index``, ``countdown``/``eta``/``expires`` and the time
      limits are carried; an option we cannot honour raises ``NotSupported``.
    * The remaining chain: ``chain`` if given; else, when ``sig`` is ``parent.chain[-1]``
      (the next step), ``parent.chain[:-1]``; else the signature's ``options.chain``.
      A callback therefore never inherits its parent's chain.

    A group or chord signature becomes several messages: use ``messages_from_signature``.
    """
    messages = messages_from_signature(sig, args_prefix=args_prefix, parent=parent, chain=chain)
    if len(messages) != 1 or sig.get("subtask_type") not in (None, "", "chain"):
        raise ValueError(
            f"Signature of type {sig.get('subtask_type')!r} makes {len(messages)} messages; "
            "use messages_from_signature()."
        )
    return messages[0]


def messages_from_signature(
    sig: Mapping[str, Any],
    *,
    args_prefix: Sequence[Any] = (),
    parent: TaskMessage | None = None,
    chain: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[TaskMessage, ...]:
    """Return every message that applying ``sig`` publishes (see ``message_from_signature``).

    A task or chain gives one message; a group one per member; a chord one per header
    member (or, with an empty header, the body called with ``[]``).
    """
    if chain is None:
        chain = _carried_chain(sig, parent)
    sig = freeze(sig)
    kind = sig.get("subtask_type")
    if kind == "chain":
        steps = sig["kwargs"]["tasks"]
        prefix = () if sig.get("immutable") else (*args_prefix, *(sig.get("args") or ()))
        rest = [*chain, *reversed(steps[1:])]
        return messages_from_signature(steps[0], args_prefix=prefix, parent=parent, chain=rest)
    if kind == "group" and chain:
        return messages_from_signature(
            _chord(sig, chain[-1]), args_prefix=args_prefix, parent=parent, chain=chain[:-1]
        )
    if kind == "group":
        return _members_messages(sig, _members(sig), args_prefix, parent, chord=None)
    if kind == "chord":
        return _chord_messages(sig, args_prefix, parent, chain)
    return (_task_message(sig, args_prefix, parent, chain),)


def _task_message(
    sig: Sig, args_prefix: Sequence[Any], parent: TaskMessage | None, chain: Sequence[Any]
) -> TaskMessage:
    options = dict(sig.get("options") or {})
    options["chain"] = list(chain) or None
    args = list(sig.get("args") or ())
    if not sig.get("immutable"):
        args = [*args_prefix, *args]
    return build_message(sig["task"], args, sig.get("kwargs") or {}, options, parent=parent)


def _chord_messages(
    sig: Sig, args_prefix: Sequence[Any], parent: TaskMessage | None, chain: Sequence[Any]
) -> tuple[TaskMessage, ...]:
    header, body = sig["kwargs"]["header"], copy.deepcopy(sig["kwargs"]["body"])
    group_id = header["options"]["task_id"]
    members = _members(header)
    body["options"]["group_id"] = group_id
    if chain:
        body["options"]["chain"] = [*chain, *(body["options"].get("chain") or ())]
    body["chord_size"] = len(members)
    if not members:
        return messages_from_signature(body, args_prefix=([],), parent=parent)
    return _members_messages(header, members, args_prefix, parent, chord=body)


def _members_messages(
    group: Sig,
    members: list[Sig],
    args_prefix: Sequence[Any],
    parent: TaskMessage | None,
    chord: Sig | None,
) -> tuple[TaskMessage, ...]:
    shared = {k: v for k, v in (group.get("options") or {}).items() if k != "task_id"}
    messages = []
    for index, member in enumerate(members):
        member = _plain_task(member, "chord header" if chord else "group")
        options = {**shared, **member.get("options", {})}
        options.update(group_id=group["options"]["task_id"], group_index=index, chord=chord)
        messages.append(_task_message({**member, "options": options}, args_prefix, parent, ()))
    return tuple(messages)


def _carried_chain(sig: Mapping[str, Any], parent: TaskMessage | None) -> list[Any]:
    if parent is not None and parent.chain and (parent.chain[-1] is sig or parent.chain[-1] == sig):
        return list(parent.chain[:-1])
    return list((sig.get("options") or {}).get("chain") or ())


def _members(sig: Mapping[str, Any]) -> list[Sig]:
    tasks = sig.get("kwargs", {}).get("tasks")
    if not isinstance(tasks, list | tuple):
        raise ValueError(f"Signature {sig.get('task')!r} has no list of tasks.")
    return [plain(t) for t in tasks]


def _splice(steps: list[Sig]) -> list[Sig]:
    out: list[Sig] = []
    for step in steps:
        if step.get("subtask_type") == "chain":
            inner = _splice(_members(step))
            if inner and step.get("args") and not inner[0].get("immutable"):
                inner[0]["args"] = [*step["args"], *(inner[0].get("args") or ())]
            out.extend(inner)
        else:
            out.append(step)
    return out


def _plain_task(sig: Mapping[str, Any], where: str) -> Sig:
    if sig.get("subtask_type"):
        raise client.unsupported(
            f"A {sig['subtask_type']!r} inside a {where} is not supported by django-ray; "
            "use task signatures there."
        )
    return plain(sig)


def _group(tasks: Sequence[Any], group_id: str) -> Sig:
    return {
        "task": "celery.group",
        "args": [],
        "kwargs": {"tasks": list(tasks)},
        "options": {"task_id": group_id},
        "subtask_type": "group",
        "immutable": False,
    }


def _chord(header: Sig, body: Any) -> Sig:
    return {
        "task": "celery.chord",
        "args": [],
        "kwargs": {"header": header, "body": plain(body)},
        "options": {},
        "subtask_type": "chord",
        "immutable": False,
    }


def _extend(sig: Sig, key: str, value: Any) -> None:
    options = sig.setdefault("options", {})
    items = value if isinstance(value, list | tuple) else [value]
    options[key] = [*(options.get(key) or ()), *(plain(v) for v in items)]


def plain(value: Any) -> Any:
    """Return a deep copy with Signatures as dicts and tuples as lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def with_kwargs(sig: dict[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Merge call-time ``kwargs`` where Celery does: into the task(s) that run first."""
    kind = sig.get("subtask_type")
    sig = plain(sig)
    if kind == "chain":
        tasks = sig["kwargs"]["tasks"]
        tasks[0] = with_kwargs(tasks[0], kwargs)
    elif kind in ("group", "chord"):
        holder = sig["kwargs"]["header"] if kind == "chord" else sig
        holder["kwargs"]["tasks"] = [with_kwargs(t, kwargs) for t in holder["kwargs"]["tasks"]]
    elif not sig.get("immutable"):
        sig["kwargs"] = {**(sig.get("kwargs") or {}), **kwargs}
    return sig
