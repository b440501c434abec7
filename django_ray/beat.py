"""Periodic tasks: Celery beat's schedules, run by ``django_ray_beat`` (docs/periodic.md).

Entries come from ``CELERY_BEAT_SCHEDULE`` (or the Celery app's ``beat_schedule``) and
``DJANGO_RAY["SCHEDULE"]`` (same shape, for Django ``@task`` tasks), and from the admin.
Each lives as a ``PeriodicEntry`` row; its ``last_run_at`` is the last *tick* sent (the
scheduled moment, not the moment it was sent). A scheduler claims a tick with a
conditional UPDATE (``WHERE last_run_at = <the value it read>``) in the transaction that
enqueues it, so however many schedulers run, one of them sends each tick, and a
restarted scheduler never sends a tick again. A scheduler that was down sends the latest
due tick once per entry (the missed ones are coalesced).

A schedule is stored as JSON: ``{"every": <seconds>}`` or ``{"crontab": {"minute": "*/15",
"hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}}`` (Celery's
string syntax). Crontab fields are matched against the wall clock of ``CELERY_TIMEZONE``
(else ``TIME_ZONE``), as cron does across DST changes: a time skipped in spring runs at
the end of the gap; a time repeated in autumn runs once, unless the hour field is ``*``
(then both hours run).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, router, transaction
from django.db.models import F
from django.utils import timezone

from django_ray import conf, registry
from django_ray.celery import client
from django_ray.exceptions import ImproperlyConfiguredRay, NotRegistered

logger = logging.getLogger(__name__)

__all__ = [
    "Crontab",
    "Interval",
    "Scheduler",
    "declared_entries",
    "due_tick",
    "next_run",
    "parse_schedule",
    "schedule_zone",
]

# -- schedules ----------------------------------------------------------------------

_DAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
DAY_NAMES = {name: n for n, day in enumerate(_DAYS) for name in (day, day[:3])}
MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
# field: (smallest, largest, names)
FIELDS: dict[str, tuple[int, int, dict[str, int]]] = {
    "minute": (0, 59, {}),
    "hour": (0, 23, {}),
    "day_of_week": (0, 6, DAY_NAMES),
    "day_of_month": (1, 31, {}),
    "month_of_year": (1, 12, MONTH_NAMES),
}
_PART = re.compile(r"^(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>\d+))?$")


def parse_field(field: str, value: Any) -> frozenset[int]:
    """Return the values of ``value`` (Celery's ``*``, ``*/15``, ``1,2,5``, ``mon-fri``)."""
    low, high, names = FIELDS[field]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif isinstance(value, list | tuple | set | frozenset):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"crontab {field}={value!r}: expected a string like '*/15' or '1,2,5'.")
    result: set[int] = set()
    for part in value.replace(" ", "").lower().split(","):
        match = _PART.match(part)
        if not match:
            raise ValueError(f"crontab {field}={value!r}: cannot read {part!r}.")
        step = int(match["step"]) if match["step"] else 1
        if step < 1:
            raise ValueError(f"crontab {field}={value!r}: a step must be at least 1.")
        if match["range"] == "*":
            first, last = low, high
        else:
            bounds = match["range"].split("-")
            first = _number(field, value, bounds[0], names)
            last = _number(field, value, bounds[-1], names) if len(bounds) > 1 else first
            if len(bounds) == 1 and match["step"]:
                last = high  # "5/15": from 5, every 15
        if first > last:
            if field != "day_of_week":
                raise ValueError(f"crontab {field}={value!r}: {first} is after {last}.")
            result.update(range(first, high + 1, step))  # "fri-mon" wraps over Sunday
            result.update(range(low, last + 1, step))
        else:
            result.update(range(first, last + 1, step))
    return frozenset(result)


def _number(field: str, value: str, text: str, names: dict[str, int]) -> int:
    low, high, _ = FIELDS[field]
    if text in names:
        return names[text]
    if not text.isdigit():
        raise ValueError(f"crontab {field}={value!r}: {text!r} is not a number or a name.")
    number = int(text)
    if field == "day_of_week" and number == 7:
        number = 0  # cron's other Sunday
    if not low <= number <= high:
        raise ValueError(f"crontab {field}={value!r}: {number} is outside {low}-{high}.")
    return number


@dataclass(frozen=True, slots=True)
class Interval:
    """Every ``seconds`` (Celery's number, ``timedelta`` or ``schedule(run_every)``)."""

    seconds: float

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, int | float) and math.isfinite(self.seconds)) or (
            self.seconds <= 0
        ):
            raise ValueError(
                f"An interval must be a positive number of seconds, not {self.seconds!r}."
            )

    def to_json(self) -> dict[str, Any]:
        return {"every": self.seconds}

    def __str__(self) -> str:
        return f"every {self.seconds:g} s"


@dataclass(frozen=True, slots=True)
class Crontab:
    """Celery's ``crontab``: the field strings as given, and the values they mean."""

    minute: str = "*"
    hour: str = "*"
    day_of_week: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"

    def __post_init__(self) -> None:
        for name in FIELDS:
            parse_field(name, getattr(self, name))  # raises ValueError naming the field

    def values(self, name: str) -> frozenset[int]:
        return parse_field(name, getattr(self, name))

    def to_json(self) -> dict[str, Any]:
        return {"crontab": {name: getattr(self, name) for name in FIELDS}}

    def __str__(self) -> str:
        return (
            f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} "
            f"{self.day_of_week} (m h dom mon dow)"
        )


Schedule = Interval | Crontab


def crontab_from(obj: Any) -> Crontab:
    """Read a crontab object: ours, compat.celery's or a real ``celery.schedules.crontab``."""
    fields = {}
    for name in FIELDS:
        value = getattr(obj, f"_orig_{name}", None)
        if value is None:
            value = getattr(obj, name)
        if isinstance(value, set | frozenset | list | tuple):
            value = ",".join(str(v) for v in sorted(value))
        fields[name] = str(value)
    return Crontab(**fields)


def parse_schedule(value: Any) -> Schedule:
    """Return the schedule ``value`` means: seconds, ``timedelta``, a crontab or a schedule.

    Also reads the JSON a ``PeriodicEntry`` stores (``{"every": ...}``, ``{"crontab": ...}``).
    Raises ``ValueError`` (or ``TypeError``) saying what is wrong.
    """
    if isinstance(value, Interval | Crontab):
        return value
    if isinstance(value, bool):
        raise TypeError(f"A schedule cannot be {value!r}.")
    if isinstance(value, int | float):
        return Interval(float(value))
    if isinstance(value, timedelta):
        return Interval(value.total_seconds())
    if isinstance(value, Mapping):
        if set(value) == {"every"}:
            return Interval(float(value["every"]))
        if set(value) == {"crontab"} and isinstance(value["crontab"], Mapping):
            unknown = set(value["crontab"]) - set(FIELDS)
            if unknown:
                raise ValueError(f"Unknown crontab field(s) {sorted(unknown)!r}.")
            return Crontab(**{k: str(v) for k, v in value["crontab"].items()})
        raise ValueError(
            f"A schedule is {{'every': <seconds>}} or {{'crontab': {{...}}}}, not {value!r}."
        )
    if all(hasattr(value, name) for name in FIELDS):
        return crontab_from(value)
    run_every = getattr(value, "run_every", None)
    if getattr(value, "relative", False) is True:
        raise ValueError("schedule(relative=True) is not supported by django-ray's beat.")
    if isinstance(run_every, timedelta):
        return Interval(run_every.total_seconds())
    kind = type(value).__name__
    if kind == "solar":
        raise ValueError("solar schedules are not supported by django-ray; use a crontab.")
    raise TypeError(
        f"A schedule is a number of seconds, a timedelta, a crontab or a schedule, not {value!r}."
    )


def schedule_zone() -> tzinfo:
    """The zone crontab fields are read in: ``CELERY_TIMEZONE``, else ``TIME_ZONE``."""
    name = getattr(settings, "CELERY_TIMEZONE", None) or getattr(settings, "TIME_ZONE", None)
    return ZoneInfo(name or "UTC")


def _crontab_walls(cron: Crontab, start: datetime) -> Iterator[datetime]:
    """Yield the naive wall times at or after ``start`` matching ``cron``, in order."""
    minutes = sorted(cron.values("minute"))
    hours = sorted(cron.values("hour"))
    dows = cron.values("day_of_week")
    doms = cron.values("day_of_month")
    months = cron.values("month_of_year")
    day = start.date()
    # Every matching day repeats within 28 years (the calendar's cycle); Feb 30 never does.
    for _ in range(366 * 28):
        if day.month in months and day.day in doms and (day.isoweekday() % 7) in dows:
            for hour in hours:
                for minute in minutes:
                    wall = datetime.combine(day, time(hour, minute))
                    if wall >= start:
                        yield wall
        day += timedelta(days=1)


def _instants(wall: datetime, zone: tzinfo, *, every_hour: bool) -> list[datetime]:
    """Return the UTC moments the local wall time ``wall`` stands for.

    None exist in a spring gap: the moment the gap ends stands for it. Two exist in the
    repeated autumn hour: both with ``every_hour`` (the entry runs every hour), else the first.
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)

    def wall_of(moment: datetime) -> datetime:
        return moment.astimezone(zone).replace(tzinfo=None)

    if first == second:
        return [first]
    if wall_of(first) == wall and wall_of(second) == wall:  # repeated
        return [first, second] if every_hour else [first]
    # In a gap: the first whole minute whose wall time is past ``wall``.
    moment = min(first, second).replace(second=0, microsecond=0)
    while wall_of(moment) < wall:
        moment += timedelta(minutes=1)
    return [moment]


def next_run(schedule: Schedule, after: datetime, zone: tzinfo | None = None) -> datetime:
    """Return the first tick of ``schedule`` strictly after ``after`` (an aware datetime).

    For an ``Interval`` the ticks are ``after + k * seconds``: pass the last tick.
    """
    if isinstance(schedule, Interval):
        return after + timedelta(seconds=schedule.seconds)
    zone = zone or schedule_zone()
    every_hour = len(schedule.values("hour")) == 24
    local = after.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
    # Start a few hours early: in a repeated hour later moments have earlier wall times.
    best: datetime | None = None
    best_wall: datetime | None = None
    for wall in _crontab_walls(schedule, local - timedelta(hours=3)):
        if best_wall is not None and wall > best_wall + timedelta(hours=3):
            break
        for moment in _instants(wall, zone, every_hour=every_hour):
            if moment > after and (best is None or moment < best):
                best, best_wall = moment, wall
    if best is None:
        raise ValueError(f"The crontab {schedule} never matches a date.")
    return best


def due_tick(
    schedule: Schedule, anchor: datetime, now: datetime, zone: tzinfo | None = None
) -> tuple[datetime | None, int]:
    """Return the latest tick after ``anchor`` that is due at ``now``, and how many were due.

    ``anchor`` is the last tick sent (or when the entry was created). ``(None, 0)``: nothing
    is due. More than one due tick (the scheduler was down) still means one run.
    """
    if isinstance(schedule, Interval):
        count = math.floor((now - anchor).total_seconds() / schedule.seconds + 1e-9)
        if count < 1:
            return None, 0
        return anchor + timedelta(seconds=schedule.seconds * count), count
    zone = zone or schedule_zone()
    tick = next_run(schedule, anchor, zone)
    if tick > now:
        return None, 0
    count, jumped = 1, False
    while True:
        later = next_run(schedule, tick, zone)
        if later > now:
            return tick, count
        tick, count = later, count + 1
        if count > 50 and not jumped:  # a long outage of a frequent entry: skip ahead
            jumped = True
            recent = next_run(schedule, now - timedelta(hours=2), zone)
            if tick < recent <= now:
                tick = recent


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
