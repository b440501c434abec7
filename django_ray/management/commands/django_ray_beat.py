"""``manage.py django_ray_beat``: send periodic tasks when they are due (docs/periodic.md).

Several may run at once (on different hosts): each tick is claimed in the database, so
it is sent once. ``--once`` sends what is due now and exits.
"""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_ray.exceptions import ImproperlyConfiguredRay
from django_ray.management.commands.django_ray_worker import _configure_logging


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {value!r}")
    return number


class Command(BaseCommand):
    help = "Send periodic tasks (CELERY_BEAT_SCHEDULE, DJANGO_RAY['SCHEDULE'], the admin's)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--once", action="store_true", help="Send the entries due now, then exit."
        )
        parser.add_argument(
            "--interval", type=positive_float, default=1.0,
            help="Seconds between two looks at the schedule at most (default 1).",
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        from django_ray.beat import Scheduler

        _configure_logging(options["verbosity"])
        stop = threading.Event()
        scheduler = Scheduler(interval=options["interval"], stop=stop)
        try:
            if options["once"]:
                scheduler.setup()
                for sent in scheduler.tick():
                    self.stdout.write(
                        f"sent {sent.entry} tick {sent.tick.isoformat()} {sent.task_id}"
                    )
                return
            previous = {
                signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGTERM, signal.SIGINT)
            }
            try:
                scheduler.run()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        except ImproperlyConfiguredRay as e:
            raise CommandError(f"The periodic scheduler cannot start. {e}") from e
