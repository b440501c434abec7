"""``manage.py django_ray_prune``: delete finished task records older than an age."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand

from django_ray.operations import PruneResult, age_warning, prune


def age_days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of days, not {value!r}") from None
    if days < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more days, not {value!r}")
    return days


def non_empty(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value.strip()


class Command(BaseCommand):
    help = "Delete SUCCESSFUL, FAILED and REVOKED task records older than an age, in batches."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--min-age-days", type=age_days, default=14,
            help="Delete records finished more than this many days ago (default: 14).",
        )  # fmt: skip
        parser.add_argument(
            "--failed-min-age-days", type=age_days, default=None,
            help="Age for FAILED records (default: --min-age-days).",
        )  # fmt: skip
        parser.add_argument(
            "--queue", action="append", type=non_empty, default=[],
            help="Only records of this queue (repeatable). Default: every queue.",
        )  # fmt: skip
        parser.add_argument("--task", type=non_empty, default=None,
                            help="Only records of this task name.")  # fmt: skip
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        min_age = timedelta(days=options["min_age_days"])
        failed_days = options["failed_min_age_days"]
        failed_min_age = None if failed_days is None else timedelta(days=failed_days)
        if warning := age_warning(min_age, failed_min_age):
            self.stderr.write(warning)
        result = prune(
            min_age=min_age,
            failed_min_age=failed_min_age,
            queues=options["queue"],
            task_name=options["task"],
            dry_run=options["dry_run"],
        )
        self.stdout.write(_report(result))


def _report(result: PruneResult) -> str:
    verb = "Would delete" if result.dry_run else "Deleted"
    lines = [f"{verb} {sum(result.records.values())} finished task record(s):"]
    lines += [f"  {status}: {count}" for status, count in result.records.items()]
    lines.append(f"{verb} {result.scheduled} scheduled message(s) of finished tasks.")
    return "\n".join(lines)
