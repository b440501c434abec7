"""``celery.schedules`` on django-ray: ``crontab`` and ``schedule`` for beat schedules.

Change ``from celery.schedules import crontab`` to ``from compat.celery.schedules import
crontab``; ``django_ray_beat`` reads these (and real Celery's) in ``CELERY_BEAT_SCHEDULE``.
Fields use Celery's string syntax (``*``, ``*/15``, ``1,2,5``, ``1-5``, ``mon-fri``) and
are matched in ``CELERY_TIMEZONE`` (else ``TIME_ZONE``). A crontab matches when all of
its fields do (day of month *and* day of week), as in Celery.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from compat.celery.exceptions import NotSupported
from django_ray.beat import FIELDS, Crontab, Interval, next_run, parse_field

__all__ = ["crontab", "schedule"]


class schedule:  # Celery's name
    """Run every ``run_every`` (seconds or a ``timedelta``)."""

    def __init__(self, run_every: float | timedelta, relative: bool = False, **kwargs: Any):
        if relative:
            raise NotSupported("schedule(relative=True) is not supported by django-ray's beat.")
        seconds = run_every.total_seconds() if isinstance(run_every, timedelta) else run_every
        self._interval = Interval(float(seconds))
        self.run_every = timedelta(seconds=self._interval.seconds)
        self.relative = relative

    @property
    def seconds(self) -> float:
        return self._interval.seconds

    def __repr__(self) -> str:
        return f"<freq: {self.run_every}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, schedule) and other.run_every == self.run_every

    def __hash__(self) -> int:
        return hash(self.run_every)


class crontab:  # Celery's name
    """Celery's ``crontab(minute, hour, day_of_week, day_of_month, month_of_year)``."""

    def __init__(
        self,
        minute: str | int = "*",
        hour: str | int = "*",
        day_of_week: str | int = "*",
        day_of_month: str | int = "*",
        month_of_year: str | int = "*",
        **kwargs: Any,
    ) -> None:
        self._cron = Crontab(
            minute=str(minute),
            hour=str(hour),
            day_of_week=str(day_of_week),
            day_of_month=str(day_of_month),
            month_of_year=str(month_of_year),
        )
        for name in FIELDS:
            # Celery keeps the string as given in _orig_<field> and the values in <field>.
            setattr(self, f"_orig_{name}", getattr(self._cron, name))
            setattr(self, name, set(parse_field(name, getattr(self._cron, name))))

    def next_run(self, after: datetime | None = None) -> datetime:
        """The first moment after ``after`` (default: now) this crontab matches."""
        return next_run(self._cron, after or timezone.now())

    def __repr__(self) -> str:
        c = self._cron
        return (
            f"<crontab: {c.minute} {c.hour} {c.day_of_month} {c.month_of_year} "
            f"{c.day_of_week} (m/h/dM/MY/d)>"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and other._cron == self._cron

    def __hash__(self) -> int:
        return hash(self._cron)
