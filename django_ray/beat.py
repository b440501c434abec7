"""Periodic tasks: Celery beat's schedules, run by ``django_ray_beat`` (docs/periodic.md).

Entries come from ``CELERY_BEAT_SCHEDULE`` (or the Celery app's ``beat_schedule``) and
``DJANGO_RAY["SCHEDULE"]`` (same shape, for Django ``@task`` tasks), and from the admin.
Each lives as a ``PeriodicEntry`` row; its ``last_run_at`` is the last *tick* sent (the
scheduled moment, not the moment it was sent). A scheduler claims a tick with a
conditional UPDATE (``WHERE last_run_at = <the value it read>``) in the transaction that
enqueues it, so however many schedulers run, one of them sends each tick, and a
restarted scheduler never sends a tick again. A scheduler that was down sends the latest
due tick once per entry (the missed ones are coalesced).

Schedules and when they are due are ``django_ray.timetable`` (re-exported here).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, router, transaction
from django.db.models import F
from django.utils import timezone

from django_ray import conf, registry
from django_ray.celery import client
from django_ray.exceptions import ImproperlyConfiguredRay, NotRegistered
from django_ray.timetable import (
    FIELDS,
    Crontab,
    Interval,
    due_tick,
    next_run,
    parse_field,
    parse_schedule,
    schedule_zone,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FIELDS",
    "Crontab",
    "Interval",
    "Scheduler",
    "declared_entries",
    "due_tick",
    "next_run",
    "parse_field",
    "parse_schedule",
    "schedule_zone",
]

# -- entries ------------------------------------------------------------------------

ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options"})
DJANGO_OPTIONS = frozenset({"queue", "priority"})


@dataclass(frozen=True, slots=True)
class Declared:
    """An entry of a settings schedule, normalised to what ``PeriodicEntry`` stores."""

    name: str
    task: str
    schedule: dict[str, Any]
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    origin: str


def _declared(name: str, raw: Any, origin: str) -> Declared:
    if not isinstance(raw, Mapping):
        raise ImproperlyConfiguredRay(f"Periodic entry {name!r} in {origin} must be a dict.")
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise ImproperlyConfiguredRay(
            f"Periodic entry {name!r} in {origin} has unknown key(s) {sorted(unknown)!r}."
        )
    if not isinstance(raw.get("task"), str) or "schedule" not in raw:
        raise ImproperlyConfiguredRay(
            f"Periodic entry {name!r} in {origin} needs 'task' (a task name) and 'schedule'."
        )
    try:
        schedule = parse_schedule(raw["schedule"])
    except (TypeError, ValueError) as e:
        raise ImproperlyConfiguredRay(f"Periodic entry {name!r} in {origin}: {e}") from e
    options = dict(raw.get("options") or {})
    return Declared(
        name=str(name),
        task=raw["task"],
        schedule=schedule.to_json(),
        args=list(raw.get("args") or ()),
        kwargs=dict(raw.get("kwargs") or {}),
        options=options,
        origin=origin,
    )


def _celery_schedules() -> list[tuple[str, Any]]:
    """The beat schedules of the Celery side: the settings, and the app of the sending side
    (the project's real Celery app, or the compat.celery app)."""
    found: list[tuple[str, Any]] = [
        ("CELERY_BEAT_SCHEDULE", getattr(settings, "CELERY_BEAT_SCHEDULE", None))
    ]
    found.append(client.current().beat_schedule())
    return found


def declared_entries() -> dict[str, Declared]:
    """Every entry the settings declare, by name (a name declared twice differently raises)."""
    sources = [*_celery_schedules(), ('DJANGO_RAY["SCHEDULE"]', conf.get("SCHEDULE"))]
    entries: dict[str, Declared] = {}
    for origin, schedule in sources:
        if not schedule:
            continue
        if not isinstance(schedule, Mapping):
            raise ImproperlyConfiguredRay(f"{origin} must be a dict of entries by name.")
        for name, raw in schedule.items():
            entry = _declared(name, raw, origin)
            seen = entries.get(entry.name)
            if seen is not None and _same(seen, entry) is False:
                raise ImproperlyConfiguredRay(
                    f"Periodic entry {entry.name!r} is declared differently in {seen.origin} "
                    f"and {origin}: rename one."
                )
            entries.setdefault(entry.name, entry)
    return entries


def _same(a: Declared, b: Declared) -> bool:
    return (a.task, a.schedule, a.args, a.kwargs, a.options) == (
        b.task,
        b.schedule,
        b.args,
        b.kwargs,
        b.options,
    )


def check_entry(name: str, task: str, args: Any, kwargs: Any, options: Any) -> None:
    """Raise ``ImproperlyConfiguredRay`` naming the entry if it could not be enqueued."""
    try:
        entry = registry.resolve(task)
    except NotRegistered:
        raise ImproperlyConfiguredRay(
            f"Periodic entry {name!r} names the task {task!r}, which is not registered: "
            "declare it in an installed app's tasks module (or DJANGO_RAY['TASK_MODULES'], "
            "or the Celery app's include), or correct the name."
        ) from None
    try:
        if entry.kind == "django":
            _django_task(entry.obj, options)
            from django_ray.message import normalize_arguments

            normalize_arguments(list(args), dict(kwargs))
        else:
            _celery_message(task, args, kwargs, options)
    except Exception as e:
        raise ImproperlyConfiguredRay(f"Periodic entry {name!r} cannot be sent: {e}") from e


def _django_task(task: Any, options: Mapping[str, Any]) -> Any:
    unknown = set(options) - DJANGO_OPTIONS
    if unknown:
        raise ValueError(
            f"option(s) {sorted(unknown)!r} are not supported for a Django task "
            f"(supported: {sorted(DJANGO_OPTIONS)})."
        )
    changes: dict[str, Any] = {}
    if options.get("queue") is not None:
        changes["queue_name"] = options["queue"]
    if options.get("priority") is not None:
        changes["priority"] = options["priority"]
    return task.using(**changes) if changes else task


def _celery_message(task: str, args: Any, kwargs: Any, options: Mapping[str, Any]) -> Any:
    # The same builder as apply_async/send_task (routing, defaults, option checks), with
    # the settings of whichever side declares the task (django_ray.celery.client).
    from django_ray.celery.send import build_message

    return build_message(task, args, kwargs, dict(options))


def enqueue(task: str, args: Any, kwargs: Any, options: Mapping[str, Any]) -> str:
    """Enqueue one run through the normal path; return the id of its ``TaskRecord``."""
    entry = registry.resolve(task)
    if entry.kind == "django":
        result = _django_task(entry.obj, options).enqueue(*args, **kwargs)
        return str(result.id)
    from django_ray.enqueue import enqueue as enqueue_messages

    message = _celery_message(task, args, kwargs, options)
    enqueue_messages((message,))
    return str(message.id)


# -- the scheduler ------------------------------------------------------------------


def sync_declared(entries: Mapping[str, Declared]) -> None:
    """Write the settings' entries to ``PeriodicEntry`` (keeping their runs); drop stale ones."""
    from django_ray.models import PeriodicEntry

    for entry in entries.values():
        fields = {
            "task": entry.task,
            "schedule": entry.schedule,
            "args": entry.args,
            "kwargs": entry.kwargs,
            "options": entry.options,
            "source": PeriodicEntry.Source.SETTINGS,
        }
        for attempt in range(2):
            try:
                with transaction.atomic():
                    PeriodicEntry.objects.update_or_create(name=entry.name, defaults=fields)
                break
            except IntegrityError:  # another scheduler created it at the same moment
                if attempt:
                    raise
    PeriodicEntry.objects.filter(source=PeriodicEntry.Source.SETTINGS).exclude(
        name__in=list(entries)
    ).delete()


@dataclass
class Sent:
    """One tick a scheduler sent: which entry, the tick, the task id, ticks coalesced."""

    entry: str
    tick: datetime
    task_id: str
    coalesced: int


class Scheduler:
    """Claims due ticks of the ``PeriodicEntry`` table and enqueues them.

    ``setup()`` loads the registry, checks the settings' entries (an entry naming an
    unregistered task raises ``ImproperlyConfiguredRay`` naming it) and syncs them to the
    table. ``tick()`` sends what is due; ``run()`` loops until ``stop`` is set.
    """

    def __init__(
        self,
        *,
        interval: float = 1.0,
        clock: Callable[[], datetime] = timezone.now,
        stop: threading.Event | None = None,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.stop = stop or threading.Event()
        self.zone = schedule_zone()

    def setup(self) -> dict[str, Declared]:
        registry.autodiscover()
        entries = declared_entries()
        for entry in entries.values():
            check_entry(entry.name, entry.task, entry.args, entry.kwargs, entry.options)
        sync_declared(entries)
        return entries

    def tick(self) -> list[Sent]:
        """Send every entry that is due now (one run each); return what this scheduler sent."""
        from django_ray.models import PeriodicEntry

        now = self.clock()
        sent: list[Sent] = []
        for entry in PeriodicEntry.objects.filter(enabled=True).order_by("name"):
            try:
                done = self._send_if_due(entry, now)
            except Exception:
                logger.exception("Periodic entry %r could not be sent; trying again.", entry.name)
                continue
            if done is not None:
                sent.append(done)
        return sent

    def _send_if_due(self, entry: Any, now: datetime) -> Sent | None:
        from django_ray.models import PeriodicEntry

        schedule = parse_schedule(entry.schedule)
        anchor = entry.last_run_at or entry.created_at
        tick, count = due_tick(schedule, anchor, now, self.zone)
        if tick is None:
            return None
        if count > 1 and conf.get("BEAT_CATCH_UP") == "each":
            # The first missed tick now; the next loop sends the one after, until caught up.
            tick, count = next_run(schedule, anchor, self.zone), 1
        using = router.db_for_write(PeriodicEntry) or DEFAULT_DB_ALIAS
        with transaction.atomic(using=using):
            claimed = (
                PeriodicEntry.objects.using(using)
                .filter(pk=entry.pk, last_run_at=entry.last_run_at, enabled=True)
                .update(last_run_at=tick, total_run_count=F("total_run_count") + 1)
            )
            if claimed != 1:
                return None  # another scheduler sent this tick
            task_id = enqueue(entry.task, entry.args, entry.kwargs, entry.options)
        if count > 1:
            logger.warning(
                "Periodic entry %r: %d ticks were due; sent the latest once (tick %s).",
                entry.name, count, tick.isoformat(),
            )  # fmt: skip
        logger.info(
            "Sent periodic entry %r tick %s as %s (%s).",
            entry.name, tick.isoformat(), task_id, entry.task,
        )  # fmt: skip
        return Sent(entry.name, tick, task_id, count - 1)

    def seconds_to_next(self, now: datetime) -> float:
        """Seconds until the next tick of any enabled entry (at most ``interval``)."""
        from django_ray.models import PeriodicEntry

        soonest = self.interval
        for entry in PeriodicEntry.objects.filter(enabled=True):
            try:
                schedule = parse_schedule(entry.schedule)
                moment = next_run(schedule, entry.last_run_at or entry.created_at, self.zone)
            except (TypeError, ValueError):
                continue
            soonest = min(soonest, max((moment - now).total_seconds(), 0.0))
        return soonest

    def run(self, *, setup: bool = True) -> None:
        """Set up, then send due ticks until ``stop`` is set. Database errors back off."""
        if setup:
            self.setup()
        logger.info("Periodic scheduler started (zone %s).", self.zone)
        backoff = self.interval
        try:
            while not self.stop.is_set():
                try:
                    self.tick()
                    wait = self.seconds_to_next(self.clock())
                    backoff = self.interval
                except Exception:
                    logger.exception("Periodic scheduler: tick failed; again in %.1f s.", backoff)
                    wait, backoff = backoff, min(backoff * 2, 30.0)
                self.stop.wait(max(wait, 0.01))
        finally:
            connections.close_all()  # this thread's connections
        logger.info("Periodic scheduler stopped.")


class BeatThread:
    """The scheduler on a daemon thread next to a worker (``django_ray_worker --beat``).

    ``start()`` sets up on the calling thread, so an entry naming an unregistered task
    stops the worker at start; ``stop()`` ends the loop and waits for it.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.scheduler = Scheduler(interval=interval)
        self.thread = threading.Thread(
            target=self.scheduler.run, kwargs={"setup": False}, name="django-ray-beat", daemon=True
        )

    def start(self) -> BeatThread:
        self.scheduler.setup()
        self.thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self.scheduler.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout)


def next_run_of(entry: Any, zone: tzinfo | None = None) -> datetime | None:
    """The next tick of a ``PeriodicEntry`` (for the admin); None if its schedule is invalid."""
    try:
        return next_run(parse_schedule(entry.schedule), entry.last_run_at or entry.created_at, zone)
    except (TypeError, ValueError):
        return None
