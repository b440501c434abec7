"""Periodic tasks (django_ray.beat): schedules, the tick claim, and real schedulers."""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.test import override_settings

from compat.celery.exceptions import NotSupported
from compat.celery.schedules import crontab, schedule
from django_ray import beat
from django_ray.beat import Crontab, Interval, due_tick, next_run, parse_field, parse_schedule
from django_ray.exceptions import ImproperlyConfiguredRay
from django_ray.models import PeriodicEntry, TaskRecord
from tests.conftest import ROOT, worker_command, worker_env
from tests.processes import Process
from tests.waiting import wait_until

BERLIN = ZoneInfo("Europe/Berlin")
UTC_ZONE = ZoneInfo("UTC")


def at(text: str, zone: ZoneInfo = UTC_ZONE, fold: int = 0) -> datetime:
    """An aware moment from a local wall time ``YYYY-mm-dd HH:MM`` in ``zone``."""
    return datetime.fromisoformat(text).replace(tzinfo=zone, fold=fold)


def runs(cron: Crontab, start: datetime, count: int, zone: ZoneInfo) -> list[datetime]:
    """The next ``count`` ticks after ``start`` (a controlled clock: no time passes)."""
    found, moment = [], start
    for _ in range(count):
        moment = next_run(cron, moment, zone)
        found.append(moment)
    return found


# -- Celery's crontab syntax -----------------------------------------------------------


def test_field_syntax() -> None:
    assert parse_field("minute", "*/15") == {0, 15, 30, 45}
    assert parse_field("minute", "1,2,5") == {1, 2, 5}
    assert parse_field("hour", "1-5") == {1, 2, 3, 4, 5}
    assert parse_field("hour", "8-17/3") == {8, 11, 14, 17}
    assert parse_field("minute", "5/20") == {5, 25, 45}
    assert parse_field("day_of_week", "mon-fri") == {1, 2, 3, 4, 5}
    assert parse_field("day_of_week", "sun,saturday") == {0, 6}
    assert parse_field("day_of_week", "fri-mon") == {5, 6, 0, 1}
    assert parse_field("day_of_week", "7") == {0}
    assert parse_field("month_of_year", "jan,jul-aug") == {1, 7, 8}
    assert parse_field("day_of_month", 15) == {15}
    for field, bad in [("minute", "60"), ("hour", "*/0"), ("day_of_week", "someday"),
                       ("day_of_month", "0"), ("hour", "5-1"), ("minute", "")]:  # fmt: skip
        with pytest.raises(ValueError, match=field):
            parse_field(field, bad)


def test_compat_crontab_matches_celery_fields() -> None:
    from celery.schedules import crontab as real_crontab

    ours = crontab(minute="*/15", hour="1-5", day_of_week="mon-fri")
    real = real_crontab(minute="*/15", hour="1-5", day_of_week="mon-fri")
    for name in beat.FIELDS:
        assert getattr(ours, name) == getattr(real, name), name
    assert parse_schedule(ours) == parse_schedule(real) == Crontab("*/15", "1-5", "mon-fri")
    assert repr(ours) == repr(real)


def test_schedules_in_every_form() -> None:
    import celery.schedules

    assert parse_schedule(30) == parse_schedule(timedelta(seconds=30)) == Interval(30)
    assert parse_schedule(schedule(timedelta(minutes=1))) == Interval(60)
    assert parse_schedule(celery.schedules.schedule(5)) == Interval(5)
    assert parse_schedule({"every": 2}) == Interval(2)
    cron = parse_schedule({"crontab": {"minute": "0", "hour": "3"}})
    assert cron == Crontab(minute="0", hour="3")
    assert parse_schedule(cron.to_json()) == cron
    for bad in [0, -1, True, "soon", {"every": 1, "x": 2}, {"crontab": {"second": "1"}}]:
        with pytest.raises((TypeError, ValueError)):
            parse_schedule(bad)
    with pytest.raises(ValueError, match="relative"):
        parse_schedule(celery.schedules.schedule(5, relative=True))
    with pytest.raises(NotSupported, match="relative"):
        schedule(5, relative=True)
    solar = type("solar", (), {})  # celery.schedules.solar needs ephem; its name is enough
    with pytest.raises(ValueError, match="solar"):
        parse_schedule(solar())


# -- next run, with a controlled clock ------------------------------------------------


def test_every_fifteen_minutes() -> None:
    cron = Crontab(minute="*/15")
    assert runs(cron, at("2024-05-01 10:07"), 3, UTC_ZONE) == [
        at("2024-05-01 10:15"), at("2024-05-01 10:30"), at("2024-05-01 10:45"),
    ]  # fmt: skip
    # Exactly on a tick: the next one, never the same one.
    assert next_run(cron, at("2024-05-01 10:15"), UTC_ZONE) == at("2024-05-01 10:30")
    assert next_run(cron, at("2024-05-01 23:50"), UTC_ZONE) == at("2024-05-02 00:00")


def test_month_ends() -> None:
    last_day = Crontab(minute="0", hour="0", day_of_month="31")
    assert runs(last_day, at("2024-01-31 00:00"), 3, UTC_ZONE) == [
        at("2024-03-31 00:00"), at("2024-05-31 00:00"), at("2024-07-31 00:00"),
    ]  # fmt: skip
    leap = Crontab(minute="30", hour="12", day_of_month="29", month_of_year="2")
    assert next_run(leap, at("2024-03-01 00:00"), UTC_ZONE) == at("2028-02-29 12:30")
    new_year = Crontab(minute="0", hour="0", day_of_month="1", month_of_year="1")
    assert next_run(new_year, at("2024-12-31 23:59"), UTC_ZONE) == at("2025-01-01 00:00")
    with pytest.raises(ValueError, match="never"):
        next_run(Crontab(minute="0", hour="0", day_of_month="30", month_of_year="2"),
                 at("2024-01-01 00:00"), UTC_ZONE)  # fmt: skip


def test_day_of_week_and_day_of_month_both_match() -> None:
    weekdays = Crontab(minute="0", hour="9", day_of_week="mon-fri")
    # 2024-05-03 is a Friday: the next weekday 09:00 is Monday's.
    assert runs(weekdays, at("2024-05-03 10:00"), 2, UTC_ZONE) == [
        at("2024-05-06 09:00"), at("2024-05-07 09:00"),
    ]  # fmt: skip
    sundays = Crontab(minute="0", hour="0", day_of_week="sun")
    assert next_run(sundays, at("2024-05-01 00:00"), UTC_ZONE) == at("2024-05-05 00:00")
    # Celery ANDs the day fields: Friday the 13th.
    friday_13 = Crontab(minute="0", hour="0", day_of_week="fri", day_of_month="13")
    assert next_run(friday_13, at("2024-01-01 00:00"), UTC_ZONE) == at("2024-09-13 00:00")


def test_dst_spring_forward_in_berlin() -> None:
    # 2024-03-31: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    daily = Crontab(minute="30", hour="2")
    ticks = runs(daily, at("2024-03-30 12:00", BERLIN), 3, BERLIN)
    assert [t.astimezone(BERLIN).strftime("%d %H:%M %Z") for t in ticks] == [
        "31 03:00 CEST", "01 02:30 CEST", "02 02:30 CEST",
    ]  # fmt: skip
    assert ticks[0] == at("2024-03-31 01:00", UTC)  # once, at the end of the gap
    hourly = Crontab(minute="0")
    ticks = runs(hourly, at("2024-03-31 00:30", BERLIN), 3, BERLIN)
    assert [t.astimezone(UTC).hour for t in ticks] == [0, 1, 2]  # 01:00 CET, 03:00, 04:00 CEST
    quarter = runs(Crontab(minute="*/15"), at("2024-03-31 01:40", BERLIN), 4, BERLIN)
    assert [t.astimezone(BERLIN).strftime("%H:%M") for t in quarter] == [
        "01:45", "03:00", "03:15", "03:30",
    ]  # fmt: skip


def test_dst_fall_back_in_berlin() -> None:
    # 2024-10-27: 03:00 CEST goes back to 02:00 CET; 02:00-02:59 happens twice.
    daily = Crontab(minute="30", hour="2")
    ticks = runs(daily, at("2024-10-26 12:00", BERLIN), 2, BERLIN)
    assert ticks == [at("2024-10-27 00:30", UTC), at("2024-10-28 01:30", UTC)]  # once a day
    # An entry that runs every hour runs in both 02:00 hours: every real hour.
    hourly = runs(Crontab(minute="0"), at("2024-10-27 00:30", BERLIN), 4, BERLIN)
    assert [t.astimezone(UTC).strftime("%H:%M") for t in hourly] == [
        "23:00", "00:00", "01:00", "02:00",
    ]  # fmt: skip
    assert hourly[0].date().day == 26
    quarter = runs(Crontab(minute="*/15"), at("2024-10-27 02:50", BERLIN), 5, BERLIN)
    gaps = {(b - a) for a, b in itertools.pairwise(quarter)}
    assert gaps == {timedelta(minutes=15)}


def test_due_tick_coalesces_missed_ticks() -> None:
    start = at("2024-05-01 10:00")
    assert due_tick(Interval(60), start, start + timedelta(seconds=59)) == (None, 0)
    assert due_tick(Interval(60), start, start + timedelta(seconds=60)) == (
        start + timedelta(seconds=60), 1,
    )  # fmt: skip
    # Down for 10.5 minutes: one run, at the latest tick of the fixed grid.
    assert due_tick(Interval(60), start, start + timedelta(seconds=630)) == (
        start + timedelta(seconds=600), 10,
    )  # fmt: skip
    cron = Crontab(minute="*/15")
    assert due_tick(cron, start, at("2024-05-01 11:20"), UTC_ZONE) == (at("2024-05-01 11:15"), 5)
    # A week down for an every-minute entry: still one run, the latest minute.
    tick, count = due_tick(Crontab(), start, at("2024-05-08 10:00:30"), UTC_ZONE)
    assert tick == at("2024-05-08 10:00") and count > 50


# -- entries in the database, the claim ------------------------------------------------


class Clock:
    """A controlled clock: ``now`` moves only when the test moves it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


QUEUE = "beat-inprocess"


@pytest.fixture
def declared(settings: object) -> dict[str, dict[str, object]]:
    """A Celery-style entry in CELERY_BEAT_SCHEDULE and a Django one in DJANGO_RAY['SCHEDULE']."""
    import tests.compat.compat_tasks  # noqa: F401  (registers the compat tasks)

    celery_schedule = {
        "add-every-quarter": {
            "task": "tests.compat.compat_tasks.add",
            "schedule": crontab(minute="*/15"),
            "args": (2, 3),
            "options": {"queue": QUEUE, "priority": 9, "expires": 30},
        }
    }
    django_schedule = {
        "noop-every-minute": {
            "task": "tests.tasks.add",
            "schedule": timedelta(minutes=1),
            "kwargs": {"x": 1, "y": 2},
            "options": {"queue": QUEUE, "priority": 10},
        }
    }
    settings.CELERY_BEAT_SCHEDULE = celery_schedule  # type: ignore[attr-defined]
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "SCHEDULE": django_schedule}  # type: ignore[attr-defined]
    return {**celery_schedule, **django_schedule}


@pytest.mark.django_db
def test_settings_entries_are_synced_to_the_table(declared: dict[str, dict[str, object]]) -> None:
    PeriodicEntry.objects.create(name="from-admin", task="tests.tasks.noop", schedule={"every": 5})
    stale = PeriodicEntry.objects.create(
        name="removed-from-settings", task="tests.tasks.noop", schedule={"every": 5},
        source=PeriodicEntry.Source.SETTINGS,
    )  # fmt: skip
    beat.Scheduler().setup()
    rows = {e.name: e for e in PeriodicEntry.objects.all()}
    assert set(rows) == {"add-every-quarter", "noop-every-minute", "from-admin"}
    assert not PeriodicEntry.objects.filter(pk=stale.pk).exists()
    quarter = rows["add-every-quarter"]
    assert quarter.source == "settings" and quarter.task == "tests.compat.compat_tasks.add"
    assert quarter.schedule == {"crontab": {"minute": "*/15", "hour": "*", "day_of_week": "*",
                                            "day_of_month": "*", "month_of_year": "*"}}  # fmt: skip
    assert quarter.args == [2, 3] and quarter.options["expires"] == 30
    minute = rows["noop-every-minute"]
    assert minute.schedule == {"every": 60.0} and minute.kwargs == {"x": 1, "y": 2}
    assert rows["from-admin"].source == "admin"
    # A changed declaration updates its row and keeps its runs; syncing again is a no-op.
    PeriodicEntry.objects.filter(pk=minute.pk).update(total_run_count=7)
    settings_schedule = {"noop-every-minute": {**declared["noop-every-minute"], "schedule": 120}}
    with override_settings(
        CELERY_BEAT_SCHEDULE={}, DJANGO_RAY={**_django_ray(), "SCHEDULE": settings_schedule}
    ):
        beat.Scheduler().setup()
        beat.Scheduler().setup()
    minute.refresh_from_db()
    assert minute.schedule == {"every": 120.0} and minute.total_run_count == 7
    assert set(PeriodicEntry.objects.values_list("name", flat=True)) == {
        "noop-every-minute", "from-admin",
    }  # fmt: skip


def _django_ray() -> dict[str, object]:
    from django.conf import settings

    return dict(settings.DJANGO_RAY)


@pytest.mark.django_db
def test_an_unregistered_task_is_a_start_up_error(settings: object) -> None:
    from django.core.management.base import CommandError

    settings.CELERY_BEAT_SCHEDULE = {  # type: ignore[attr-defined]
        "typo": {"task": "tests.tasks.nope", "schedule": 10}
    }
    with pytest.raises(CommandError, match=re.escape("'typo' names the task 'tests.tasks.nope'")):
        call_command("django_ray_beat", "--once")
    with pytest.raises(ImproperlyConfiguredRay, match=re.escape("tests.tasks.nope")):
        beat.BeatThread().start()
    settings.CELERY_BEAT_SCHEDULE = {  # type: ignore[attr-defined]
        "bad-option": {"task": "tests.tasks.noop", "schedule": 10, "options": {"expires": 5}}
    }
    with pytest.raises(ImproperlyConfiguredRay, match=r"'bad-option'.*expires"):
        beat.Scheduler().setup()
    assert not PeriodicEntry.objects.exists()


@pytest.mark.django_db
def test_each_tick_is_enqueued_once_by_two_schedulers(declared: object) -> None:
    start = datetime(2024, 5, 1, 10, 7, 30, tzinfo=UTC)
    clock = Clock(start)
    first, second = beat.Scheduler(clock=clock), beat.Scheduler(clock=clock)
    with override_settings(TIME_ZONE="UTC"):
        first.setup()
        second.setup()
        PeriodicEntry.objects.update(created_at=start)
        assert first.tick() == [] and second.tick() == []
        sent: list[beat.Sent] = []
        for _ in range(30):  # 15 minutes in steps of 30 s: each scheduler looks every step
            clock.advance(30)
            sent += first.tick() + second.tick()
    minute = [s for s in sent if s.entry == "noop-every-minute"]
    quarter = [s for s in sent if s.entry == "add-every-quarter"]
    assert [s.tick for s in minute] == [start + timedelta(minutes=m) for m in range(1, 16)]
    assert [s.tick for s in quarter] == [datetime(2024, 5, 1, 10, 15, tzinfo=UTC)]
    assert {s.coalesced for s in sent} == {0}
    # Each run is a real task: a TaskRecord, with the entry's arguments and options.
    records = TaskRecord.objects.filter(queue=QUEUE)
    assert records.count() == 16
    assert set(records.values_list("id", flat=True)) == {s.task_id for s in sent}
    django_record = records.get(pk=minute[0].task_id)
    assert (django_record.task_name, django_record.kwargs) == ("tests.tasks.add", {"x": 1, "y": 2})
    assert django_record.priority == 10 and django_record.backend == "default"
    celery_record = records.get(pk=quarter[0].task_id)
    assert celery_record.task_name == "tests.compat.compat_tasks.add"
    assert celery_record.args == [2, 3] and celery_record.expires is not None
    assert celery_record.priority == 100  # Celery's 9 on django://: first
    counts = dict(PeriodicEntry.objects.values_list("name", "total_run_count"))
    assert counts == {"noop-every-minute": 15, "add-every-quarter": 1}
    # The worker runs them like any other task.
    call_command("django_ray_worker", f"--queue={QUEUE}", "--sync", "--batch")
    assert set(records.values_list("status", flat=True)) == {"SUCCESSFUL"}
    assert {r.return_value for r in records} == {3, 5}


@pytest.mark.django_db
def test_a_restarted_scheduler_catches_up_once_and_never_resends(declared: object) -> None:
    start = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    clock = Clock(start)
    scheduler = beat.Scheduler(clock=clock)
    scheduler.setup()
    PeriodicEntry.objects.update(created_at=start)
    clock.advance(61)
    assert [s.entry for s in scheduler.tick()] == ["noop-every-minute"]
    # Restarted at once: the tick it sent is not sent again.
    restarted = beat.Scheduler(clock=clock)
    restarted.setup()
    assert restarted.tick() == []
    # Down for an hour: one run per entry, at the latest tick, the missed ones coalesced.
    clock.advance(3600)
    sent = {s.entry: s for s in beat.Scheduler(clock=clock).tick()}
    assert sent["noop-every-minute"].tick == start + timedelta(minutes=61)
    assert sent["noop-every-minute"].coalesced == 59
    assert sent["add-every-quarter"].tick == datetime(2024, 5, 1, 11, 0, tzinfo=UTC)
    assert sent["add-every-quarter"].coalesced == 3
    assert TaskRecord.objects.filter(queue=QUEUE).count() == 3
    # Disabled entries are not sent.
    PeriodicEntry.objects.update(enabled=False)
    clock.advance(3600)
    assert beat.Scheduler(clock=clock).tick() == []


@pytest.mark.django_db
def test_catch_up_each_sends_every_missed_tick_once(declared: object, settings: object) -> None:
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "BEAT_CATCH_UP": "each"}  # type: ignore[attr-defined]
    start = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    clock = Clock(start)
    scheduler = beat.Scheduler(clock=clock)
    scheduler.setup()
    PeriodicEntry.objects.update(created_at=start)
    clock.advance(3 * 60 + 5)  # down for three ticks of the minute entry
    ticks = []
    while sent := [s for s in scheduler.tick() if s.entry == "noop-every-minute"]:
        ticks += [s.tick for s in sent]
    assert ticks == [start + timedelta(minutes=n) for n in (1, 2, 3)]
    assert all(s.coalesced == 0 for s in scheduler.tick())


@pytest.mark.django_db
def test_once_command_sends_due_entries(declared: object) -> None:
    from io import StringIO

    call_command("django_ray_beat", "--once")  # creates the rows; nothing due yet
    PeriodicEntry.objects.update(created_at=datetime(2024, 5, 1, tzinfo=UTC))
    out = StringIO()
    call_command("django_ray_beat", "--once", stdout=out)
    assert sorted(line.split()[1] for line in out.getvalue().splitlines()) == [
        "add-every-quarter", "noop-every-minute",
    ]  # fmt: skip
    assert TaskRecord.objects.filter(queue=QUEUE).count() == 2


# -- real processes: two schedulers and a worker -----------------------------------------

REDIS_BEAT_URL = "redis://127.0.0.1:6379/12"
SENT_LINE = re.compile(r"Sent periodic entry '(?P<entry>[^']+)' tick (?P<tick>\S+) as (?P<id>\S+) ")
COALESCED_LINE = re.compile(r"Periodic entry '(?P<entry>[^']+)': (?P<count>\d+) ticks were due")


def beat_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "testproject" / "manage.py"), "django_ray_beat", *args]


@pytest.fixture
def processes() -> Iterator[Callable[[list[str], dict[str, str]], Process]]:
    started: list[Process] = []

    def start(command: list[str], env: dict[str, str]) -> Process:
        process = Process(command, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def _broker(kind: str) -> str:
    if kind == "django":
        return "django://"
    from tests.services import require

    require("Redis", "127.0.0.1", 6379)
    return REDIS_BEAT_URL


@pytest.mark.slow
@pytest.mark.spread
@pytest.mark.timeout(240)
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["django", pytest.param("redis", marks=pytest.mark.redis)])
def test_two_schedulers_and_a_worker_enqueue_each_tick_once(
    kind: str, processes: Callable[[list[str], dict[str, str]], Process]
) -> None:
    from uuid import uuid4

    url = _broker(kind)
    queue = f"beat-{uuid4().hex[:8]}"
    env = worker_env(DJANGO_RAY_BROKER=url)
    entry = PeriodicEntry.objects.create(
        name=f"every-second-{queue}", task="tests.tasks.noop", schedule={"every": 1},
        options={"queue": queue},
    )  # fmt: skip
    schedulers = [processes(beat_command("--interval", "0.1"), env) for _ in range(2)]
    worker = processes(worker_command("--sync", f"--queue={queue}"), env)
    everyone = [*schedulers, worker]

    def ran_a_minute() -> bool:
        for process in everyone:
            process.check_alive()
        entry.refresh_from_db()
        return entry.total_run_count >= 60

    wait_until(ran_a_minute, "a minute of ticks", timeout=150, details=lambda: schedulers[0].log)
    assert [s.stop() for s in schedulers] == [0, 0]
    entry.refresh_from_db()
    records = TaskRecord.objects.filter(task_name="tests.tasks.noop", queue=queue)
    wait_until(
        lambda: set(records.values_list("status", flat=True)) == {"SUCCESSFUL"},
        "the worker to run every tick", timeout=30, details=lambda: worker.log,
    )  # fmt: skip
    assert worker.stop() == 0
    # What the two schedulers say they sent: each tick once, by one of them.
    sent = [m for s in schedulers for m in SENT_LINE.finditer(s.log) if m["entry"] == entry.name]
    ticks = sorted(datetime.fromisoformat(m["tick"]) for m in sent)
    assert len(ticks) == len(set(ticks)) == entry.total_run_count == records.count()
    assert {m["id"] for m in sent} == set(records.values_list("id", flat=True))
    # Every tick of the 1 s grid since the entry was created: sent, or coalesced and said so.
    elapsed = round((ticks[-1] - entry.created_at).total_seconds())
    assert ticks[0] - entry.created_at == timedelta(seconds=1) or elapsed > len(ticks)
    coalesced = sum(
        int(m["count"]) - 1
        for s in schedulers
        for m in COALESCED_LINE.finditer(s.log)
        if m["entry"] == entry.name
    )
    assert elapsed == len(ticks) + coalesced, (ticks, coalesced)
    assert entry.last_run_at == ticks[-1]
    if kind == "redis":
        from django_ray.transport import Broker

        broker = Broker(url)
        try:
            broker.connection.default_channel.queue_delete(queue)
        finally:
            broker.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.django_db(transaction=True)
def test_worker_with_beat_sends_and_runs_periodic_tasks(
    processes: Callable[[list[str], dict[str, str]], Process],
) -> None:
    from uuid import uuid4

    queue = f"beat-{uuid4().hex[:8]}"
    entry = PeriodicEntry.objects.create(
        name=f"worker-beat-{queue}", task="tests.tasks.add", schedule={"every": 1},
        args=[20, 22], options={"queue": queue},
    )  # fmt: skip
    worker = processes(worker_command("--sync", "--beat", f"--queue={queue}"), worker_env())
    records = TaskRecord.objects.filter(task_name="tests.tasks.add", queue=queue)

    def two_done() -> bool:
        worker.check_alive()
        return records.filter(status="SUCCESSFUL").count() >= 2

    wait_until(two_done, "two periodic runs", timeout=40, details=lambda: worker.log)
    assert worker.stop() == 0
    assert "Periodic scheduler stopped." in worker.log
    entry.refresh_from_db()
    assert records.count() == entry.total_run_count
    assert set(records.values_list("return_value", flat=True)) == {42}


@pytest.mark.django_db
def test_worker_with_beat_stops_at_start_on_an_unregistered_task(settings: object) -> None:
    from django.core.management.base import CommandError

    settings.CELERY_BEAT_SCHEDULE = {  # type: ignore[attr-defined]
        "typo": {"task": "tests.tasks.nope", "schedule": 10}
    }
    with pytest.raises(CommandError, match=r"worker cannot start.*'tests\.tasks\.nope'"):
        call_command("django_ray_worker", "--sync", "--beat", "--batch", "--queue=beat-none")


# -- the admin ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_lists_entries_and_runs_actions(declared: object, admin_client: object) -> None:
    from django.test import Client
    from django.urls import reverse

    assert isinstance(admin_client, Client)
    beat.Scheduler().setup()
    PeriodicEntry.objects.create(
        name="admin-made", task="tests.tasks.add", schedule={"every": 30}, args=[1, 1],
        options={"queue": QUEUE},
    )  # fmt: skip
    changelist = reverse("admin:django_ray_periodicentry_changelist")
    page = admin_client.get(changelist).content.decode().lower()
    for text in ["admin-made", "every 30 s", "*/15 * * * * (m h dom mon dow)", "next run",
                 "total run count", "settings"]:  # fmt: skip
        assert text in page, text
    ids = [str(pk) for pk in PeriodicEntry.objects.values_list("pk", flat=True)]
    admin_client.post(changelist, {"action": "disable", "_selected_action": ids})
    assert not PeriodicEntry.objects.filter(enabled=True).exists()
    admin_client.post(changelist, {"action": "enable", "_selected_action": ids})
    assert not PeriodicEntry.objects.filter(enabled=False).exists()
    made = PeriodicEntry.objects.get(name="admin-made")
    admin_client.post(changelist, {"action": "run_now", "_selected_action": [str(made.pk)]})
    record = TaskRecord.objects.get(queue=QUEUE)
    assert (record.task_name, record.args) == ("tests.tasks.add", [1, 1])
    made.refresh_from_db()
    assert made.total_run_count == 1 and made.last_run_at is None  # the schedule is unchanged


@pytest.mark.django_db
def test_admin_settings_entries_are_read_only_and_new_ones_are_checked(
    declared: object, admin_client: object
) -> None:
    from django.test import Client
    from django.urls import reverse

    assert isinstance(admin_client, Client)
    beat.Scheduler().setup()
    declared_entry = PeriodicEntry.objects.get(name="noop-every-minute")
    page = admin_client.get(
        reverse("admin:django_ray_periodicentry_change", args=[declared_entry.pk])
    ).content.decode()
    assert 'name="task"' not in page and "tests.tasks.add" in page
    assert "Delete" not in page.split("submit-row")[-1]
    add = reverse("admin:django_ray_periodicentry_add")
    form = {"name": "typo", "task": "tests.tasks.nope", "schedule": '{"every": 5}',
            "args": "[]", "kwargs": "{}", "options": "{}", "enabled": "on"}  # fmt: skip
    response = admin_client.post(add, form)
    assert response.status_code == 200 and "No task" in response.content.decode()
    response = admin_client.post(add, {**form, "task": "tests.tasks.noop", "schedule": '{"x": 1}'})
    assert response.status_code == 200 and "A schedule is" in response.content.decode()
    response = admin_client.post(
        add, {**form, "task": "tests.tasks.noop", "schedule": '{"crontab": {"minute": "*/5"}}'}
    )
    assert response.status_code == 302
    created = PeriodicEntry.objects.get(name="typo")
    assert created.source == "admin" and created.schedule == {"crontab": {"minute": "*/5"}}
