"""Fuzz: over 10,000 generated and mutated protocol-v2 messages against one running worker.

One ``--sync`` worker subprocess consumes one queue while the test publishes, with raw
kombu, valid Celery protocol-v2 messages and mutants of them: broken JSON, wrong types,
extreme integers and dates, oversized strings and headers, NUL characters, random embeds
(callbacks, errbacks, chains, chords, groups), bodies sent as ``utf-8`` text and as
``binary`` bytes, and content types that are not JSON. On Redis, items that are not kombu
envelopes at all (not JSON, JSON of the wrong shape, envelopes whose base64 body encoding
is broken) are pushed straight onto the list; on ``django://`` the same garbage goes into
queue rows. The test then asserts:

* the worker stays up the whole time, and stops cleanly (exit 0) when asked to;
* every message that carries an id a task record can hold ends in a recorded state: a
  finished ``TaskRecord`` (SUCCESSFUL, FAILED or REVOKED), a message parked for a far ETA,
  or a dead letter; nothing is left in the queue and no record stays READY or RUNNING;
* nothing outside the registry runs: every SUCCESSFUL record names a task the worker
  registered, and the canary module ``tests.fuzz_canary`` (which writes a marker file when
  imported or run) is never touched, however messages name it.

How the corpus is made, deterministically: a single Hypothesis ``@given`` function is run
with ``derandomize=True`` (its seed is a hash of the function), no example database and
only the generate phase, and ``max_examples`` examples. Each example is one valid message
plus four lists of mutations of it, so the corpus is ``5 x max_examples`` messages; the test
function only collects what it is given and never fails, so nothing is shrunk or replayed.
The same Hypothesis version builds the same corpus on every run and machine (``.example()``
would not: it is random and meant for the REPL). Times are drawn as offsets ("30 s ago",
"2 s ahead", "a day ahead") and turned into dates when the message is published, so that
an ETA a few seconds ahead is still a few seconds ahead when the worker reads it.

The brokers share the corpus, so the two runs together put all of it (10,300 messages)
through a worker, each message once: django:// takes every fourth example (a claim there
is a database transaction; its storage and the worker's are one SQLite file) and Redis the
other three quarters.

The figures (messages by kind, outcomes, seconds) are printed; run with ``-s`` to see them.
``DJANGO_RAY_FUZZ_EXAMPLES`` changes the number of examples (for a quicker local run).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from django_ray.message import MAX_NAME_LENGTH
from django_ray.models import FINISHED, QueueMessage, ScheduledMessage, TaskRecord
from django_ray.transport import broker_kind
from tests.conftest import worker_command, worker_env
from tests.inprocess import queue_size
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

MUTANTS_PER_MESSAGE = 9
EXAMPLES = int(os.environ.get("DJANGO_RAY_FUZZ_EXAMPLES", "1030"))
PUBLISH_CHUNK = 400

# Tasks the worker registered that the corpus may name: none sleeps, exits or writes files.
RUNNABLE = [
    "tests.tasks.add",
    "tests.tasks.noop",
    "tests.tasks.fail",
    "tests.tasks.length",
    "tests.tasks.with_context",
    "tests.tasks.async_add",
    "tests.tasks.non_json_result",
    "tests.tasks.flaky",
    "tests.tasks.count_records",
    "celery.starmap",
    "celery.map",
]
# Names that must never run or be imported.
FORBIDDEN = [
    "tests.fuzz_canary.run",
    "tests.fuzz_canary",
    "tests.fuzz_canary.run.anything",
    "tests.tasks.fuzz_canary",
    "tests.tasks.sub.anything",
    "tests.tasks.add.__globals__",
    "os.system",
    "subprocess.run",
    "builtins.eval",
    "django_ray.models.TaskRecord.delete",
    "celery.chord_unlock",
    "",
]
# Mostly names the worker runs; names it must refuse (and never import); arbitrary text.
TASK_NAMES = st.one_of(
    st.sampled_from(RUNNABLE),
    st.sampled_from(RUNNABLE + FORBIDDEN),
    st.text(max_size=40),
)

TRICKY_STRINGS = [
    "\x00",
    "a\x00b",
    "\ud800",  # a lone surrogate: valid as a JSON escape, not encodable as UTF-8
    "\u2028\u2029",
    "\U0001d518",
    "' OR 1=1 --",
    "{{7*7}}",
    "%s%s%n",
    "..\\..\\etc/passwd",
]
EXTREME_INTS = [2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63), 2**64, 10**30, -1]
EXTREME_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999",
    "1899-12-31T23:59:59+00:00",
    "8999-12-31T23:59:59+00:00",  # inside the range: parked for seven thousand years
    "2024-02-30T00:00:00",
    "1970-01-01T00:00:00Z",
    "now",
    "",
]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.sampled_from(EXTREME_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(TRICKY_STRINGS),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _signature(task: str, args: list[Any]) -> dict[str, Any]:
    return {"task": task, "args": args, "kwargs": {}, "options": {}, "subtask_type": None}


def _canvas(kind: str, parts: list[dict[str, Any]], body: dict[str, Any] | None = None) -> dict:
    kwargs: dict[str, Any] = {"tasks": parts}
    if kind == "chord":
        kwargs = {"header": parts, "body": body}
    return {
        "task": f"celery.{kind}",
        "args": [],
        "kwargs": kwargs,
        "options": {},
        "subtask_type": kind,
    }


SIGNATURES = st.recursive(
    st.builds(_signature, TASK_NAMES, st.lists(st.integers(-5, 5) | SCALARS, max_size=2)),
    lambda inner: st.one_of(
        st.builds(
            _canvas, st.sampled_from(["group", "chain"]), st.lists(inner, min_size=1, max_size=3)
        ),
        st.builds(_canvas, st.just("chord"), st.lists(inner, min_size=1, max_size=3), inner),
    ),
    max_leaves=4,
)
EMBEDS = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "callbacks": st.lists(SIGNATURES, max_size=2),
            "errbacks": st.lists(SIGNATURES, max_size=2),
            "chain": st.lists(SIGNATURES, max_size=2),
            "chord": SIGNATURES,
        },
    ),
)
# Offsets resolved when the message is published (see the module docstring).
TIMES = st.one_of(
    st.none(),
    st.tuples(st.just("ago"), st.integers(1, 10**8)),
    st.tuples(st.just("soon"), st.integers(1, 3)),
    st.tuples(st.just("days"), st.integers(1, 10**5)),
    st.sampled_from(EXTREME_TIMES),
)
IDS = st.none() | st.text(min_size=1, max_size=40)

# Well-typed headers (values of the wrong type come from the mutations below).
HEADERS = st.fixed_dictionaries(
    {"lang": st.just("py"), "task": TASK_NAMES},
    optional={
        "eta": TIMES,
        "expires": TIMES,
        "retries": st.integers(0, 3),
        "timelimit": st.lists(
            st.none() | st.integers(1, 100) | st.floats(1e-9, 1e308), min_size=2, max_size=2
        ),
        "root_id": IDS,
        "parent_id": IDS,
        "group": IDS,
        "group_index": st.none() | st.integers(0, 5),
        "ignore_result": st.none() | st.booleans(),
        "django_ray_priority": st.none() | st.integers(-100, 100),
        "django_ray_backend": st.none() | st.just("default"),
        "shadow": st.none() | st.text(max_size=20),
        "argsrepr": st.text(max_size=20),
    },
)
ARGS = st.one_of(
    st.lists(st.integers(-(10**6), 10**6), min_size=2, max_size=2), st.lists(JSON, max_size=4)
)
KWARGS = st.one_of(
    st.just({}),
    st.dictionaries(
        st.sampled_from(["x", "y", "data", "value", "succeed_on"]) | st.text(max_size=5),
        JSON,
        max_size=3,
    ),
)


@dataclass(frozen=True)
class Valid:
    """A protocol-v2 message before it is given its id and queue."""

    headers: dict[str, Any]
    args: Any
    kwargs: Any
    embed: Any
    as_bytes: bool  # send the body as binary bytes rather than utf-8 text
    priority: int | None


VALID = st.builds(
    Valid, HEADERS, ARGS, KWARGS, EMBEDS, st.booleans(), st.none() | st.integers(0, 9)
)

HEADER_KEYS = [
    "task",
    "id",
    "eta",
    "expires",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "group",
    "group_index",
    "django_ray_priority",
    "django_ray_backend",
    "lang",
]
GARBAGE = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[1, 2, 3]",
            b'"a string"',
            b"{}",
            b'{"body": 1}',
            b"\xff\xfe\x00",
            b"{" * 3000,
        ]
    ),
    JSON.map(lambda v: json.dumps(v).encode()),
)
MUTATIONS = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(HEADER_KEYS)),
    st.tuples(
        st.just("set"),
        st.sampled_from([key for key in HEADER_KEYS if key != "id"]),  # ids: the "id" mutation
        JSON | st.sampled_from(EXTREME_INTS) | st.sampled_from(EXTREME_TIMES),
    ),
    st.tuples(st.just("id"), st.sampled_from(["long", "max", "nul", "int", "empty", "list"])),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("splice"), st.floats(0, 1), st.text(min_size=1, max_size=4)),
    st.tuples(st.just("body"), JSON),
    # One branch for the costly ones, and mostly small sizes (a list repeats a size to make it
    # likelier): some 30 messages of 300 KB to 1.1 MB and 100 with headers near or over the
    # 256 KiB limit, not thousands, keep the run under two minutes.
    st.one_of(
        st.tuples(st.just("deep"), st.sampled_from([100, 990, 1000, 5000, 60_000])),
        st.tuples(
            st.just("big"),
            st.sampled_from([1_000] * 10 + [10_000] * 5 + [70_000] * 2 + [300_000, 1_100_000]),
        ),
        st.tuples(st.just("headers"), st.sampled_from([1_000] * 6 + [200_000, 270_000])),
    ),
    st.tuples(st.just("nul"), st.sampled_from(["args", "kwargs", "embed"])),
    st.tuples(st.just("binary"), st.binary(min_size=1, max_size=8)),
    st.tuples(
        st.just("content_type"),
        st.sampled_from(
            [
                "application/x-python-serialize",
                "application/x-yaml",
                "text/plain",
                "application/json; charset=utf-8",
                "APPLICATION/JSON",
                "x",
            ]
        ),
    ),
    st.tuples(st.just("embed"), JSON),
    st.tuples(st.just("shape"), st.sampled_from(["dict", "two", "four", "args", "kwargs"])),
    st.tuples(st.just("raw"), GARBAGE),
    st.tuples(
        st.just("envelope"),
        st.sampled_from(["bad-base64", "no-properties", "rot13", "headers-list", "valid"]),
    ),
)
EXAMPLE = st.tuples(
    VALID,
    st.lists(
        st.lists(MUTATIONS, min_size=1, max_size=3),
        min_size=MUTANTS_PER_MESSAGE,
        max_size=MUTANTS_PER_MESSAGE,
    ),
)


@cache
def corpus() -> tuple[tuple[Valid, list[list[tuple[Any, ...]]]], ...]:
    """Return the examples: each a valid message and the mutation lists of its mutants."""
    drawn: list[tuple[Valid, list[list[tuple[Any, ...]]]]] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(EXAMPLE)
    def collect(example: tuple[Valid, list[list[tuple[Any, ...]]]]) -> None:
        drawn.append(example)

    collect()
    return tuple(drawn)


# -- turning the corpus into wire messages ---------------------------------------------------


@dataclass
class Wire:
    """One message as it is put on the broker."""

    kind: str  # "valid", "mutant", "raw" (not a kombu envelope) or "envelope" (hand-made)
    headers: Any = None
    body: bytes | str = b""
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    priority: int | None = None
    raw: bytes = b""  # for "raw" and "envelope": the exact bytes pushed

    @property
    def task_id(self) -> str | None:
        """The id a task record can hold, if the message carries one."""
        if self.kind == "raw" or not isinstance(self.headers, dict):
            return None
        value = self.headers.get("id")
        ok = isinstance(value, str) and 0 < len(value) <= MAX_NAME_LENGTH and "\x00" not in value
        return value if ok else None


def _time(spec: Any, now: datetime) -> Any:
    if isinstance(spec, tuple):
        unit, amount = spec
        delta = {
            "ago": -timedelta(seconds=amount),
            "soon": timedelta(seconds=amount),
            "days": timedelta(days=1, minutes=amount),
        }[unit]
        return (now + delta).isoformat()
    return spec


def _point_at(value: Any, queue: str) -> Any:
    """Send every follow-up a signature would publish back to ``queue`` (no stray queues)."""
    if isinstance(value, dict):
        if isinstance(value.get("options"), dict):
            value["options"]["queue"] = queue
        for item in value.values():
            _point_at(item, queue)
    elif isinstance(value, list):
        for item in value:
            _point_at(item, queue)
    return value


def valid_wire(message: Valid, task_id: str, queue: str, now: datetime) -> Wire:
    headers = {
        key: _time(v, now) if key in ("eta", "expires") else v for key, v in message.headers.items()
    }
    headers["id"] = task_id
    embed = _point_at(json.loads(json.dumps(message.embed)), queue)
    body = json.dumps([message.args, message.kwargs, embed])
    wire = Wire("valid", headers, body, priority=message.priority)
    if message.as_bytes:
        wire.body, wire.content_encoding = body.encode(), "binary"
    return wire


def mutate(base: Wire, mutations: list[tuple[Any, ...]], queue: str) -> Wire:
    wire = Wire(
        "mutant",
        dict(base.headers),
        base.body,
        base.content_type,
        base.content_encoding,
        base.priority,
    )
    text = base.body.decode() if isinstance(base.body, bytes) else base.body
    for mutation in mutations:
        op, *params = mutation
        if op == "drop":
            wire.headers.pop(params[0], None)
        elif op == "set":
            wire.headers[params[0]] = params[1]
        elif op == "id":
            own = str(base.headers["id"])
            wire.headers["id"] = {
                "long": own + "x" * 300,
                "max": own.ljust(MAX_NAME_LENGTH, "m"),
                "nul": own + "\x00",
                "int": 12345,
                "empty": "",
                "list": [own],
            }[params[0]]
        elif op == "truncate":
            text = text[: int(len(text) * params[0])]
        elif op == "splice":
            at = int(len(text) * params[0])
            text = text[:at] + params[1] + text[at:]
        elif op == "body":
            text = json.dumps(params[0])
        elif op == "deep":
            text = "[" + "[" * params[0] + "]" * params[0] + ", {}, null]"
        elif op == "big":
            text = json.dumps([["x" * params[0]], {}, None])
        elif op == "headers":
            wire.headers["padding"] = "p" * params[0]
        elif op == "nul":
            parts = json.loads(text) if _is_triple(text) else [[], {}, {}]
            slot = {"args": 0, "kwargs": 1, "embed": 2}[params[0]]
            parts[slot] = {
                "args": ["a\x00b"],
                "kwargs": {"k": "\x00"},
                "embed": {"callbacks": [_signature("tests.tasks.noop\x00", [])]},
            }[params[0]]
            text = json.dumps(parts)
        elif op == "binary":
            wire.body, wire.content_encoding = params[0] + text.encode(), "binary"
            return wire
        elif op == "content_type":
            wire.content_type = params[0]
        elif op == "embed":
            parts = json.loads(text) if _is_triple(text) else [[], {}, None]
            parts[2] = params[0]
            text = json.dumps(parts)
        elif op == "shape":
            parts = json.loads(text) if _is_triple(text) else [[], {}, None]
            text = json.dumps(
                {
                    "dict": {"args": parts[0]},
                    "two": parts[:2],
                    "four": [*parts, 1],
                    "args": [{"a": 1}, *parts[1:]],
                    "kwargs": [parts[0], [], parts[2]],
                }[params[0]]
            )
        elif op == "raw":
            return Wire("raw", raw=params[0])
        elif op == "envelope":
            return envelope(params[0], base, queue)
    wire.body = text
    if base.content_encoding == "binary":
        wire.body = text.encode("utf-8", "surrogatepass")
    return wire


def _is_triple(text: str) -> bool:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, list) and len(value) == 3


def envelope(variant: str, base: Wire, queue: str) -> Wire:
    """A kombu envelope written by hand, as a non-kombu producer might push it."""
    headers = dict(base.headers)
    body = base.body.encode() if isinstance(base.body, str) else base.body
    props: Any = {
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
    }
    item: dict[str, Any] = {
        "body": base64.b64encode(body).decode(),
        "headers": headers,
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "properties": props,
    }
    if variant == "bad-base64":
        item["body"] = "%%% not base64 %%%"
    elif variant == "no-properties":
        del item["properties"]
    elif variant == "rot13":
        props["body_encoding"] = "rot13"
    elif variant == "headers-list":
        item["headers"] = [headers]
    return Wire("envelope", headers=item["headers"], raw=json.dumps(item).encode(), body=variant)


def wire_messages(queue: str, part: int) -> list[Wire]:
    """The wire messages of one share of the corpus (``part`` 0: every fourth example; 1:
    the others), so that the two brokers together take all of it, each message once."""
    now = datetime.now(UTC)
    wires: list[Wire] = []
    for n, (message, mutant_lists) in enumerate(corpus()):
        if (n % 4 == 0) != (part == 0):
            continue
        base = valid_wire(message, f"{queue}-{n}", queue, now)
        wires.append(base)
        for m, mutations in enumerate(mutant_lists):
            child = dict(base.headers, id=f"{queue}-{n}.{m}")
            wires.append(
                mutate(
                    Wire(
                        "valid",
                        child,
                        base.body,
                        base.content_type,
                        base.content_encoding,
                        base.priority,
                    ),
                    mutations,
                    queue,
                )
            )
    return wires


# -- publishing ------------------------------------------------------------------------------


def publish(wires: list[Wire], queue: str, url: str, alive: Callable[[], None]) -> None:
    """Publish in chunks, each once the worker has worked the backlog down.

    A backlog of thousands of ``django://`` rows makes every claim sort them all (the
    queue table's index has no priority column), which would measure that rather than
    the worker's handling of each message.
    """
    from kombu import Producer

    from django_ray.transport import Broker

    broker = Broker(url)
    redis_client = None
    if broker.kind == "redis":
        import redis

        redis_client = redis.Redis.from_url(url)
    try:
        broker._declare(queue)
        producer = Producer(broker.connection.default_channel)
        for start in range(0, len(wires), PUBLISH_CHUNK):
            chunk = wires[start : start + PUBLISH_CHUNK]
            wait_until(
                lambda: alive() or due_backlog(queue) <= PUBLISH_CHUNK // 2,
                "the worker to take the backlog down",
                timeout=120,
                interval=0.2,
            )
            with transaction.atomic():  # django://: one commit per chunk
                for wire in chunk:
                    if wire.kind in ("raw", "envelope"):
                        push_raw(wire, queue, redis_client)
                        continue
                    producer.publish(
                        wire.body,
                        exchange="",
                        routing_key=queue,
                        headers=wire.headers,
                        content_type=wire.content_type,
                        content_encoding=wire.content_encoding,
                        priority=wire.priority,
                    )
    finally:
        broker.close()


def due_backlog(queue: str) -> int:
    """Messages in ``queue`` that are due (``django://`` also holds those with an ETA)."""
    later = datetime.now(UTC) + timedelta(minutes=1)
    if broker_kind(queue_url()) == "django":
        return QueueMessage.objects.filter(queue=queue, visible_at__lte=later).count()
    return queue_size(queue)


def push_raw(wire: Wire, queue: str, redis_client: Any) -> None:
    """Put bytes where the transport reads its messages, bypassing kombu."""
    if redis_client is not None:
        redis_client.lpush(queue, wire.raw)
        return
    QueueMessage.objects.create(
        queue=queue, payload=wire.raw.decode("utf-8", "replace"), delivery_tag=str(uuid.uuid4())
    )


# -- the test --------------------------------------------------------------------------------


@pytest.fixture
def fuzz_queue(broker_url: str) -> Iterator[str]:
    name = f"fz-{uuid.uuid4().hex[:8]}"
    yield name
    if broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker_url)
        for key in client.scan_iter(f"{name}*"):
            client.delete(key)


def held_for_eta(queue: str) -> set[str]:
    """Ids of messages that wait for an ETA more than a minute ahead.

    A worker parks them (``ScheduledMessage``); ``django://`` keeps them in the queue table
    itself, invisible until their ETA, so no worker has read them yet.
    """
    later = datetime.now(UTC) + timedelta(minutes=1)
    held = set(ScheduledMessage.objects.filter(eta__gt=later).values_list("task_id", flat=True))
    for payload in QueueMessage.objects.filter(queue=queue, visible_at__gt=later).values_list(
        "payload", flat=True
    ):
        headers = json.loads(payload).get("headers")
        if isinstance(headers, dict) and isinstance(headers.get("id"), str):
            held.add(headers["id"])
    return held


def outstanding(queue: str, ids: list[str]) -> dict[str, Any]:
    """What is not settled yet: messages due, records neither finished nor held for an ETA."""
    held = held_for_eta(queue)
    unfinished = set(TaskRecord.objects.exclude(status__in=FINISHED).values_list("pk", flat=True))
    recorded = set(TaskRecord.objects.filter(pk__in=ids).values_list("pk", flat=True))
    return {
        "waiting": due_backlog(queue),
        "unfinished": sorted(unfinished - held)[:10],
        "unrecorded": sorted(set(ids) - recorded - held)[:10],
    }


def queue_url() -> str:
    from django.conf import settings

    return str(settings.DJANGO_RAY["BROKER_URL"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "broker_url", ["django", pytest.param("redis", marks=pytest.mark.redis)], indirect=True
)
def test_fuzzed_messages_never_stop_the_worker_and_nothing_unregistered_runs(
    broker_url: str, fuzz_queue: str, tmp_path: Path
) -> None:
    queue = fuzz_queue
    started = time.monotonic()
    wires = wire_messages(queue, part=0 if broker_url.startswith("django") else 1)
    generated = time.monotonic()
    ids = [w.task_id for w in wires if w.task_id is not None and w.kind != "envelope"]
    # Each broker takes its share of the corpus: 10,300 messages through the two of them.
    assert len(wires) >= (2_500 if broker_url.startswith("django") else 7_500) or EXAMPLES < 1000
    assert len(set(ids)) == len(ids)

    canary = tmp_path / "canary"
    log_path = tmp_path / "worker.log"
    env = worker_env(DJANGO_RAY_FUZZ_CANARY=str(canary), DJANGO_RAY_BROKER=broker_url)
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(
            worker_command(f"--queue={queue}", "--sync", "--worker-id=fuzzed"),
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )

    def log() -> str:
        return log_path.read_text(errors="replace")[-5000:]

    def alive() -> None:
        if worker.poll() is not None:
            raise AssertionError(f"the worker exited ({worker.returncode}):\n{log()}")

    try:
        publish(wires, queue, broker_url, alive)
        published = time.monotonic()
        alive()

        def settled() -> bool:
            alive()
            if due_backlog(queue):  # the full look (thousands of ids) only once drained
                return False
            left = outstanding(queue, ids)
            return not any(left.values())

        wait_until(
            settled,
            "every fuzzed message to settle",
            timeout=240,
            interval=1,
            details=lambda: f"{outstanding(queue, ids)}\n{log()}",
        )
        drained = time.monotonic()
        alive()
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait(10)
    assert code == 0, log()

    # Nothing outside the registry ran or was imported.
    assert not canary.exists(), canary.read_text()
    ran = Counter(
        TaskRecord.objects.filter(status="SUCCESSFUL").values_list("task_name", flat=True)
    )
    assert set(ran) <= set(RUNNABLE), ran

    # Every message with an id ended recorded (finished, parked far ahead, or dead-lettered).
    records = {r.pk: r for r in TaskRecord.objects.filter(pk__in=ids)}
    held = held_for_eta(queue)
    outcomes: Counter[str] = Counter()
    for task_id in ids:
        record = records.get(task_id)
        if record is None:
            assert task_id in held, task_id
            outcomes["waiting for its ETA in the queue"] += 1
        elif record.status in FINISHED:
            error = (record.last_error or {}).get("exception_class_path", "")
            if error.endswith("DeliveryLimitExceeded"):
                outcomes["dead-lettered"] += 1
            else:
                outcomes[record.status] += 1
        else:
            assert task_id in held, (task_id, record.status)
            outcomes["parked for its ETA"] += 1
    envelopes = [w for w in wires if w.kind == "envelope"]
    for wire in envelopes:  # a well-formed hand-made envelope is an ordinary message
        if wire.body == "valid" and wire.task_id is not None and wire.task_id not in held:
            assert TaskRecord.objects.get(pk=wire.task_id).status in FINISHED
    errors = Counter(
        (r.last_error or {}).get("exception_class_path", "?").rsplit(".", 1)[-1]
        for r in records.values()
        if r.status == "FAILED"
    )
    kinds = Counter(w.kind for w in wires)
    print(
        f"\nfuzz [{broker_url.split(':')[0]}]: {len(wires)} messages "
        f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}); "
        f"{len(ids)} with a storable id -> {dict(sorted(outcomes.items()))}; "
        f"without one: {len(wires) - len(ids)}; follow-up records: "
        f"{TaskRecord.objects.count() - len(records)}; SUCCESSFUL by task: {dict(ran)}; "
        f"FAILED by error: {dict(errors.most_common(8))}; "
        f"seconds: corpus {generated - started:.1f}, publish {published - generated:.1f}, "
        f"drain {drained - published:.1f}, total {drained - started:.1f}; "
        f"worker alive throughout, exit {code}"
    )
    assert due_backlog(queue) == 0
    assert queue_size(f"{queue}.dead-letter") == outcomes["dead-lettered"]
