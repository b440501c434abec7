"""``manage.py django_ray_status``: records by status and waiting messages, per queue."""

from __future__ import annotations

import argparse
import json
from typing import Any

from django.core.management.base import BaseCommand

from django_ray.operations import QueueStatus, StatusReport, WorkerStatus, status


def non_empty(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value.strip()


class Command(BaseCommand):
    help = "Show, per queue, task records by status, RUNNING attempts and waiting messages."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--queue", action="append", type=non_empty, default=[],
            help="Only this queue (repeatable). Default: every queue with records or messages.",
        )  # fmt: skip
        parser.add_argument(
            "--json", action="store_true", help="Print one JSON object (see docs/operations.md)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = status(queues=options["queue"])
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self.stdout.write(_report(report))


def _report(report: StatusReport) -> str:
    if not report.queues and not report.workers:
        return "No queue has task records or messages."
    blocks = [_queue(queue, report) for queue in report.queues]
    if report.broker_error:
        blocks.append(f"Broker {report.broker} unreachable: {report.broker_error}")
    if report.workers:
        blocks.append(
            f"Workers (heartbeat every {report.heartbeat_interval:g} s)\n"
            + "\n".join(_worker(worker) for worker in report.workers)
        )
    stale = sum(queue.stale for queue in report.queues)
    if stale:
        blocks.append(
            f"{stale} stale RUNNING record(s): last attempt older than VISIBILITY_TIMEOUT "
            f"({report.visibility_timeout:g} s). Their worker probably died; their message "
            "will be delivered again."
        )
    if report.stale_workers:
        blocks.append(
            f"{report.stale_workers} stale worker(s): no heartbeat for 3 x HEARTBEAT_INTERVAL "
            f"({3 * report.heartbeat_interval:g} s). They probably died."
        )
    return "\n\n".join(blocks)


def _queue(queue: QueueStatus, report: StatusReport) -> str:
    now = report.generated_at
    lines = [
        f"Queue {queue.name!r}",
        "  tasks:     " + "  ".join(f"{name} {count}" for name, count in queue.tasks.items()),
    ]
    if queue.oldest_ready_age is not None:
        age = _duration(queue.oldest_ready_age)
        lines.append(f"  oldest READY: {queue.oldest_ready_id}, waiting {age}")
    if report.broker_kind == "django":
        messages = f"{queue.messages_visible} visible, {queue.messages_hidden} hidden"
    else:
        messages = f"{_count(queue.waiting)} waiting"
    lines.append(
        f"  messages:  {messages} ({report.broker}); "
        f"scheduled: {queue.scheduled_due} due, {queue.scheduled_future} future"
    )
    if queue.dead_lettered or queue.dead_letter_waiting:
        lines.append(
            f"  dead-lettered: {queue.dead_lettered} FAILED, "
            f"{_count(queue.dead_letter_waiting)} waiting"
        )
    for task in queue.running:
        since = "?"
        if task.last_attempted_at is not None:
            ago = _duration((now - task.last_attempted_at).total_seconds())
            since = f"{task.last_attempted_at:%Y-%m-%d %H:%M:%S %Z} ({ago} ago)"
        lines.append(
            f"  RUNNING {task.id} {task.task_name} on {task.worker_id or '?'} since {since}"
            + ("  STALE" if task.stale else "")
        )
        if task.progress_state:
            meta = json.dumps(task.progress, separators=(",", ":"), default=str)
            if len(meta) > 200:
                meta = meta[:199] + "…"
            ago = ""
            if task.progress_at is not None:
                ago = f" ({_duration((now - task.progress_at).total_seconds())} ago)"
            lines.append(f"    progress: {task.progress_state} {meta}{ago}")
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _worker(worker: WorkerStatus) -> str:
    return (
        f"  {worker.worker_id} on {worker.hostname} pid {worker.pid}: mode {worker.mode}, "
        f"queues {','.join(worker.queues) or '-'}, {worker.in_flight} in flight, "
        f"heartbeat {_duration(worker.age)} ago" + ("  STALE" if worker.stale else "")
    )


def _duration(seconds: float) -> str:
    """Return ``seconds`` as the two largest units: ``2d 3h``, ``4m 5s``."""
    rest = max(int(seconds), 0)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        value, rest = divmod(rest, size)
        if value:
            parts.append(f"{value}{unit}")
    return " ".join(parts[:2]) or "0s"
