"""``manage.py django_ray_health --url http://127.0.0.1:PORT``: a container probe.

Asks a worker's metrics server (``django_ray_worker --metrics-port PORT``) for its liveness
(``/healthz``) and readiness (``/readyz``); exits 0 when every check asked answers 200, and
1 otherwise (an error status, or no answer). ``--check live`` for a liveness probe,
``--check ready`` for a readiness probe; both by default.
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from django.core.management.base import BaseCommand

from django_ray.metrics import DEFAULT_MAX_AGE

PATHS = {"live": "/healthz", "ready": "/readyz"}


class Command(BaseCommand):
    help = "Probe a worker's /healthz and /readyz (--metrics-port); exit 0 if healthy, else 1."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--url", required=True,
            help="The worker's metrics server, e.g. http://127.0.0.1:9808.",
        )  # fmt: skip
        parser.add_argument(
            "--check", choices=["live", "ready", "all"], default="all",
            help="live: /healthz; ready: /readyz; all (default): both.",
        )  # fmt: skip
        parser.add_argument(
            "--max-age", type=float, default=DEFAULT_MAX_AGE,
            help="Seconds since the worker loop's last tick still counted alive (default 60).",
        )  # fmt: skip
        parser.add_argument("--timeout", type=float, default=5.0,
                            help="Seconds to wait for each answer (default 5).")  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        base = options["url"].rstrip("/")
        checks = ["live", "ready"] if options["check"] == "all" else [options["check"]]
        healthy = True
        for check in checks:
            url = base + PATHS[check]
            if check == "live":
                url += "?" + urlencode({"max_age": options["max_age"]})
            code, text = _get(url, options["timeout"])
            healthy = healthy and code == 200
            self.stdout.write(f"{PATHS[check]} {code or 'unreachable'}")
            for line in text.strip().splitlines():
                self.stdout.write(f"  {line}")
        if not healthy:
            raise SystemExit(1)


def _get(url: str, timeout: float) -> tuple[int, str]:
    """Return the status code and body of ``GET url`` (0 and the reason when unreachable)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(getattr(e, "reason", e))
