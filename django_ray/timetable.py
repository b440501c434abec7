"""Timetables of periodic tasks: Celery beat's schedules, and when each is due.

A schedule is stored as JSON: ``{"every": <seconds>}`` or ``{"crontab": {"minute": "*/15",
"hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}}`` (Celery's
string syntax). Crontab fields are matched against the wall clock of ``CELERY_TIMEZONE``
(else ``TIME_ZONE``), as cron does across DST changes: a time skipped in spring runs at
the end of the gap; a time repeated in autumn runs once, unless the hour field is ``*``
(then both hours run). Pure calculation: the scheduler that sends ticks is ``beat``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings

__all__ = [
    "FIELDS",
    "Crontab",
    "Interval",
    "Schedule",
    "due_tick",
    "next_run",
    "parse_field",
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
