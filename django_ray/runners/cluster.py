"""``--cluster=ADDR``: run each task as a Ray task on an existing Ray cluster.

Accepts a GCS address (``host:port``) or a Ray Client address (``ray://host:10001``), with
Ray's token authentication (``DJANGO_RAY["RAY_AUTH_TOKEN"]`` or the environment).
Everything else is the local runner.
"""

from __future__ import annotations

import logging
from typing import Any

from django_ray import conf
from django_ray.exceptions import ModeNotAvailable
from django_ray.runners.local import LocalRunner
from django_ray.runners.ray_support import runtime_env

__all__ = ["ClusterRunner"]

logger = logging.getLogger("django_ray.worker")


class ClusterRunner(LocalRunner):
    mode = "cluster"

    def __init__(self, *, worker_id: str, concurrency: int | None = None, **options: Any):
        super().__init__(worker_id=worker_id, concurrency=concurrency, **options)
        if not options.get("address"):
            raise ModeNotAvailable("--cluster needs an address, e.g. --cluster=127.0.0.1:6380.")

    def start(self) -> None:
        super().start()
        if self.options.get("preflight", True):
            from django_ray.runtime import preflight

            report = preflight.check(preflight.in_cluster())
            logger.info("%s", report.text())

    def connect(self) -> dict[str, Any]:
        from django_ray import ray_connect

        return ray_connect.init_cluster(
            self.options["address"], token=conf.get("RAY_AUTH_TOKEN"), runtime_env=runtime_env()
        )

    def shutdown(self, *, wait: bool = True) -> None:
        super().shutdown(wait=wait)
