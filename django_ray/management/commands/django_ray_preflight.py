"""``manage.py django_ray_preflight``: does the Ray cluster see the same project as this process?

Runs the worker's start-up preflight alone (see ``django_ray.runtime.preflight``): one Ray
task on ``--cluster=ADDR``, or one Ray job on the Jobs API (``--address``, default
``DJANGO_RAY["RAY_ADDRESS"]``), set up exactly as task processes are, compared with this
process. Prints each difference with its fix (``--json`` for scripts); exits 1 when a
difference would break tasks.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_ray import conf
from django_ray.exceptions import DjangoRayError


class Command(BaseCommand):
    help = "Check that the Ray cluster sets the project up as this worker does."

    def add_arguments(self, parser: Any) -> None:
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--cluster", metavar="ADDR", help="A Ray cluster (GCS host:port).")
        where.add_argument(
            "--address", metavar="URL",
            help="The Ray Jobs API (default: DJANGO_RAY['RAY_ADDRESS']).",
        )  # fmt: skip
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        from django_ray import ray_connect
        from django_ray.runners.ray_support import runtime_env
        from django_ray.runtime import preflight

        try:
            if options["cluster"]:
                ray_connect.init_cluster(
                    options["cluster"], token=conf.get("RAY_AUTH_TOKEN"), runtime_env=runtime_env()
                )
                try:
                    remote = preflight.in_cluster()
                finally:
                    ray_connect.shutdown()
            else:
                address = options["address"] or conf.get("RAY_ADDRESS")
                if not address:
                    raise CommandError(
                        "Give --cluster=HOST:PORT, or --address / DJANGO_RAY['RAY_ADDRESS'] "
                        "(the Ray Jobs API, e.g. http://127.0.0.1:8265)."
                    )
                client = ray_connect.job_client(address, token=conf.get("RAY_AUTH_TOKEN"))
                remote = preflight.as_job(client, runtime_env())
        except DjangoRayError as e:
            raise CommandError(str(e)) from e
        report = preflight.compare(preflight.describe_process(), remote)
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
        else:
            self.stdout.write(report.text())
        if not report.ok:
            raise SystemExit(1)
