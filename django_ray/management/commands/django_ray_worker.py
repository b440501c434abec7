"""``manage.py django_ray_worker``: parse arguments, build a runner, run the Worker."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from django_ray.exceptions import DjangoRayError, ImproperlyConfiguredRay
from django_ray.runners import get_runner_class
from django_ray.worker import Worker, default_worker_id


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value!r}")
    return number


def worker_id(value: str) -> str:
    if not value or len(value) > 64:
        raise argparse.ArgumentTypeError("worker id must be 1 to 64 characters")
    return value


class Command(BaseCommand):
    help = "Consume tasks from the broker and run them (sync, local Ray, Ray cluster or Ray Jobs)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--queue", action="append", dest="queue", default=[],
            help="Queue to consume (repeatable). Default: default.",
        )  # fmt: skip
        parser.add_argument("--queues", default="", help="Comma-separated queues to consume.")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--sync", action="store_true", help="Run tasks in this process, no Ray.")
        mode.add_argument(
            "--local", action="store_true", help="Start a local Ray and run tasks on it."
        )
        mode.add_argument(
            "--cluster", metavar="ADDR", default=None,
            help="Run tasks on an existing Ray cluster (ray://host:10001 or host:port).",
        )  # fmt: skip
        parser.add_argument(
            "--concurrency", type=positive_int, default=None,
            help="Tasks in flight at once (Ray modes; default: the CPUs Ray reports).",
        )  # fmt: skip
        parser.add_argument("--num-cpus", type=positive_int, default=None,
                            help="CPUs for the local Ray instance (--local).")  # fmt: skip
        parser.add_argument(
            "--batch", action="store_true", help="Exit once no task is left to run."
        )
        parser.add_argument("--max-tasks", type=positive_int, default=None,
                            help="Exit after this many tasks.")  # fmt: skip
        parser.add_argument("--worker-id", type=worker_id, default=None,
                            help="Id kept in worker_ids (default: host-pid-random).")  # fmt: skip
        parser.add_argument("--broker", default=None, help="Broker URL (default: from settings).")
        parser.add_argument(
            "--no-preflight", action="store_true",
            help="In --cluster and Ray Job mode, skip the start-up check that the cluster sees "
            "the same project (settings, apps, tasks, databases) as this worker.",
        )  # fmt: skip
        parser.add_argument(
            "--beat", action="store_true",
            help="Also send periodic tasks (as django_ray_beat does) from a thread of this "
            "worker: for small deployments.",
        )  # fmt: skip
        parser.add_argument(
            "-E", "--events", action="store_true",
            help="Send Celery's task events and worker heartbeats (Flower, celery events; "
            "Redis/RabbitMQ, needs Celery). Also on with CELERY_WORKER_SEND_TASK_EVENTS.",
        )  # fmt: skip
        parser.add_argument(
            "--metrics-port", type=int, default=None, metavar="PORT",
            help="Serve Prometheus metrics (/metrics) and health probes (/healthz, /readyz) "
            "on this port (0: a free one, logged).",
        )  # fmt: skip
        parser.add_argument(
            "--metrics-host", default="127.0.0.1",
            help="Address the metrics server binds (default 127.0.0.1).",
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        _configure_logging(options["verbosity"])
        queues = list(options["queue"]) + [q for q in options["queues"].split(",") if q.strip()]
        queues = [q.strip() for q in queues] or ["default"]
        mode = (
            "sync"
            if options["sync"]
            else "local"
            if options["local"]
            else "cluster"
            if options["cluster"]
            else "job"
        )
        runner_options: dict[str, Any] = {
            "num_cpus": options["num_cpus"], "preflight": not options["no_preflight"],
        }  # fmt: skip
        if options["cluster"]:
            runner_options["address"] = options["cluster"]
        try:
            runner_cls = get_runner_class(mode)
            runner = runner_cls(
                worker_id=options["worker_id"] or default_worker_id(),
                concurrency=options["concurrency"],
                **runner_options,
            )
            from django_ray.transport import Broker

            worker = Worker(
                queues=queues,
                runner=runner,
                broker=Broker(options["broker"]) if options["broker"] else None,
                batch=options["batch"],
                max_tasks=options["max_tasks"],
                events=options["events"],
                metrics_port=options["metrics_port"],
                metrics_host=options["metrics_host"],
            )
            beat = None
            if options["beat"]:
                from django_ray.beat import BeatThread

                beat = BeatThread().start()
            try:
                code = worker.run()
            finally:
                if beat is not None:
                    beat.stop()
        except DjangoRayError as e:
            raise CommandError(_explain(e)) from e
        if code:
            raise SystemExit(code)


def _explain(error: DjangoRayError) -> str:
    """Return the message to stop with: a configuration error in the causes says it best.

    A broken task module reaches here as ``ProcessSetupFailed`` (the process could not be
    prepared), whose cause, from ``registry.autodiscover()``, names the module and why.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ImproperlyConfiguredRay):
            return f"The worker cannot start. {cause}"
        cause = cause.__cause__
    return str(error)


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _configure_logging(verbosity: int) -> None:
    """Log to stderr with a prefix, unless the project's ``LOGGING`` already does.

    With its own handler the worker also takes Django's ``django.tasks`` logger, unless
    ``LOGGING`` names it (or ``django``, or the root logger). Left to Django's defaults it
    would print, when ``DEBUG`` is on, every task's start and outcome a second time (the
    outcome is ``django_ray.worker``'s) and a failure's traceback without a prefix. It gets
    the prefixed handler, at WARNING (a failure, with its traceback; DEBUG with ``-v 2``),
    and keeps Django's handlers other than the console's (``mail_admins``).
    """
    logger = logging.getLogger("django_ray")
    level = logging.DEBUG if verbosity > 1 else logging.INFO if verbosity else logging.WARNING
    logger.setLevel(level)
    if logger.handlers or logging.getLogger().handlers:
        return  # the project's LOGGING configured where our records go
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
    configured = getattr(settings, "LOGGING", None) or {}
    named = set(configured.get("loggers", {})) if isinstance(configured, dict) else set()
    if named & {"django", "django.tasks", ""} or (
        isinstance(configured, dict) and configured.get("root")
    ):
        return
    tasks_logger = logging.getLogger("django.tasks")
    kept = [
        h for h in logging.getLogger("django").handlers if not isinstance(h, logging.StreamHandler)
    ]
    for kept_handler in [handler, *kept]:
        tasks_logger.addHandler(kept_handler)
    tasks_logger.setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
    tasks_logger.propagate = False
