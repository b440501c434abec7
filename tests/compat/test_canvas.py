"""Canvas on the wire: chains, groups and chords encoded as Celery encodes them."""

from __future__ import annotations

from typing import Any

import pytest

from compat.celery import GroupResult, chain, chord, group, signature
from compat.celery.canvas import Signature, message_from_signature, messages_from_signature
from compat.celery.exceptions import NotSupported
from compat.celery.messages import to_django_priority
from django_ray.message import TaskMessage
from django_ray.models import TaskRecord
from tests.compat.compat_tasks import add, mul, tsum
from tests.compat.conftest import ChordSizes, roundtrip

pytestmark = pytest.mark.django_db

ADD, MUL, TSUM = add.name, mul.name, tsum.name


def test_signature_is_celerys_dict() -> None:
    sig = add.s(2, y=3)
    assert dict(sig) == {
        "task": ADD,
        "args": [2],
        "kwargs": {"y": 3},
        "options": {},
        "subtask_type": None,
        "immutable": False,
    }
    assert add.si(1, 2).immutable is True
    assert signature(ADD, args=(1, 2), countdown=3).options == {"countdown": 3}
    assert isinstance(signature(dict(sig)), Signature)


def test_chain_sends_the_first_step_with_the_rest_reversed(published: list[TaskMessage]) -> None:
    result = chain(add.s(1, 2), mul.s(10), add.si(0, 0)).apply_async()
    [first] = published
    headers, body, decoded = roundtrip(first)
    assert headers["task"] == ADD and body[0] == [1, 2]
    steps = body[2]["chain"]
    assert [s["task"] for s in steps] == [ADD, MUL]  # reversed: the next one is last
    assert steps[0]["immutable"] is True
    ids = [s["options"]["task_id"] for s in steps]
    assert result.id == ids[0]  # the last step's pre-assigned id
    assert result.parent.id == ids[1]
    assert result.parent.parent.id == first.id
    assert decoded.chain == first.chain
    assert TaskRecord.objects.filter(pk=first.id).exists()


def test_pipe_operator_builds_chains(published: list[TaskMessage]) -> None:
    sig = add.s(1, 2) | mul.s(3) | (mul.s(4) | add.s(5))
    assert isinstance(sig, chain) and [t.task for t in sig.tasks] == [ADD, MUL, MUL, ADD]
    sig.delay()
    assert len(published[0].chain) == 3


def test_chain_partial_args_go_to_the_first_task(published: list[TaskMessage]) -> None:
    chain(add.s(1), mul.s(2)).apply_async((5,))
    assert published[0].args == (5, 1)


def test_chain_options_follow_celery(published: list[TaskMessage]) -> None:
    err = add.si(0, 0)
    chain(add.s(1, 2), mul.s(3)).apply_async(queue="first", link=tsum.s(), link_error=err)
    first = published[0]
    [last] = first.chain
    assert first.queue == "first" and "queue" not in last["options"]
    assert last["options"]["link"][0]["task"] == TSUM  # link: on the last step
    assert first.errbacks[0]["task"] == ADD and last["options"]["link_error"]  # link_error: all


def test_group_sends_one_message_per_member(published: list[TaskMessage]) -> None:
    result = group(add.s(i, i) for i in range(3)).apply_async()
    assert isinstance(result, GroupResult) and len(result) == 3
    for index, message in enumerate(published):
        headers, _, _ = roundtrip(message)
        assert headers["group"] == result.id and headers["group_index"] == index
        assert message.id == result.results[index].id
    assert list(
        TaskRecord.objects.filter(group_id=result.id)
        .order_by("group_index")
        .values_list("group_index", flat=True)
    ) == [0, 1, 2]
    assert GroupResult.restore(result.id).results == result.results  # type: ignore[union-attr]


def test_group_partial_args_and_options_reach_every_member(published: list[TaskMessage]) -> None:
    group(add.s(1), mul.s(2)).apply_async((10,), queue="g")
    assert [(m.args, m.queue) for m in published] == [((10, 1), "g"), ((10, 2), "g")]


def test_chord_headers_carry_the_body(
    published: list[TaskMessage], chord_store: ChordSizes
) -> None:
    result = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
    assert len(published) == 2
    for index, message in enumerate(published):
        headers, body, _ = roundtrip(message)
        assert headers["group_index"] == index
        embedded = body[2]["chord"]
        assert embedded["task"] == TSUM
        assert embedded["options"]["task_id"] == result.id
        assert embedded["options"]["group_id"] == headers["group"]
        assert embedded["chord_size"] == 2
    assert isinstance(result.parent, GroupResult)
    assert [r.id for r in result.parent.results] == [m.id for m in published]
    assert chord_store == {published[0].group: 2}  # the client stores the header size


def test_chord_called_with_a_body(published: list[TaskMessage], chord_store: ChordSizes) -> None:
    result = chord(add.s(i, i) for i in range(2))(tsum.s())
    assert published[0].chord["options"]["task_id"] == result.id  # type: ignore[index]


def test_chain_of_a_group_and_a_task_is_a_chord(
    published: list[TaskMessage], chord_store: ChordSizes
) -> None:
    result = (group(add.s(1, 1), add.s(2, 2)) | tsum.s() | mul.s(10)).apply_async()
    assert len(published) == 2
    body = published[0].chord
    assert body is not None and body["task"] == TSUM
    assert body["options"]["chain"][0]["task"] == MUL  # the rest of the chain follows the body
    assert result.id == body["options"]["chain"][0]["options"]["task_id"]


def test_empty_chord_runs_the_body_with_an_empty_list(
    published: list[TaskMessage], chord_store: ChordSizes
) -> None:
    chord([], tsum.s()).apply_async()
    [message] = published
    assert (message.task, message.args) == (TSUM, ([],))


def test_chord_without_a_result_backend_is_sent(published: list[TaskMessage]) -> None:
    # The worker joins the header through the records created with the messages.
    result = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
    assert len(published) == 2 and published[0].chord["chord_size"] == 2  # type: ignore[index]
    records = TaskRecord.objects.filter(group_id=published[0].group).order_by("group_index")
    assert [r.id for r in records] == [m.id for m in published]
    assert not TaskRecord.objects.filter(pk=result.id).exists()  # the body: when it is sent


def test_chord_after_the_first_step_is_sent_by_the_worker(
    published: list[TaskMessage], chord_store: ChordSizes
) -> None:
    from django_ray.celery import follow_ups, results

    result = chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s()).apply_async()
    [first] = published
    assert chord_store == {}  # nothing to join yet: the worker applies the chord
    [step] = first.chain
    assert step["subtask_type"] == "chord"
    header = follow_ups.on_success(first, 2, store=results.store())
    assert [(m.task, m.args, m.group_index) for m in header] == [(ADD, (2, 1), 0), (ADD, (2, 2), 1)]
    assert header[0].chord is not None and header[0].chord["options"]["task_id"] == result.id
    assert header[0].parent_id == first.id
    assert chord_store == {header[0].group: 2}  # the sender of a header stores its size


def test_nested_canvas_inside_a_group_is_refused(published: list[TaskMessage]) -> None:
    with pytest.raises(NotSupported, match="group"):
        group(add.s(1, 1), chain(add.s(1, 1), mul.s(2))).apply_async()
    assert published == []


def test_freeze_assigns_ids_once() -> None:
    sig = add.s(1, 2)
    result = sig.freeze()
    assert sig.id == result.id and sig.freeze().id == result.id


# -- message_from_signature: what the worker calls after a task finishes ----------------


def _parent(**changes: Any) -> TaskMessage:
    fields: dict[str, Any] = {"id": "parent", "task": ADD, "root_id": "root", "priority": 40}
    return TaskMessage(**{**fields, **changes})


def test_next_chain_step_keeps_its_id_and_gets_the_result_prepended() -> None:
    rest, step = dict(add.si(0, 0).freeze() and add.si(0, 0)), dict(mul.s(10))
    step["options"] = {"task_id": "step-id"}
    parent = _parent(chain=(rest, step))
    message = message_from_signature(parent.chain[-1], args_prefix=(7,), parent=parent)
    assert (message.id, message.task, message.args) == ("step-id", MUL, (7, 10))
    assert (message.parent_id, message.root_id, message.priority) == ("parent", "root", 0)
    assert message.chain == (rest,)  # the remaining chain travels on


def test_parent_priority_is_inherited_only_when_asked(settings: Any) -> None:
    settings.CELERY_TASK_INHERIT_PARENT_PRIORITY = True
    message = message_from_signature(dict(add.s(1)), args_prefix=(1,), parent=_parent())
    assert message.priority == 40
    sig = dict(add.s(1).set(priority=9))
    assert message_from_signature(sig, args_prefix=(1,), parent=_parent()).priority == 100


def test_immutable_signature_ignores_the_result() -> None:
    message = message_from_signature(dict(add.si(1, 2)), args_prefix=(99,), parent=_parent())
    assert message.args == (1, 2)


def test_callback_does_not_inherit_the_parents_chain() -> None:
    parent = _parent(chain=(dict(mul.s(2)),))
    message = message_from_signature(dict(tsum.s()), args_prefix=([1],), parent=parent)
    assert message.chain == ()


def test_queue_and_priority_options_are_honoured() -> None:
    sig = dict(add.s(1).set(queue="q9", priority=0))
    message = message_from_signature(sig, args_prefix=(1,), parent=_parent())
    assert (message.queue, message.priority) == ("q9", to_django_priority(0))


def test_group_and_chord_signatures_make_several_messages() -> None:
    grouped = dict(group(add.s(1), add.s(2)))
    with pytest.raises(ValueError, match="messages_from_signature"):
        message_from_signature(grouped, parent=_parent())
    messages = messages_from_signature(grouped, args_prefix=(5,), parent=_parent())
    assert [(m.args, m.group_index) for m in messages] == [((5, 1), 0), ((5, 2), 1)]
    assert messages[0].group == messages[1].group is not None
    chorded = messages_from_signature(dict(chord([add.s(1, 1)], tsum.s())), parent=_parent())
    assert chorded[0].chord is not None and chorded[0].chord["chord_size"] == 1


def test_unsupported_signature_option_is_named() -> None:
    sig = dict(add.s(1, 2).set(exchange="x"))
    with pytest.raises(NotSupported, match="exchange"):
        message_from_signature(sig, parent=_parent())
