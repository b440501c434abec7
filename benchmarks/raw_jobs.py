"""Floor for Ray Job mode: a raw JobSubmissionClient submit-and-wait round trip."""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from typing import Any


def round_trip(head: Any, samples: int = 5) -> float:
    """Return the median seconds to submit a trivial Python job and see it SUCCEEDED."""
    from django_ray import ray_connect

    client = ray_connect.job_client(head.dashboard_url, token=head.token)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        job_id = client.submit_job(
            entrypoint=f"{sys.executable} -c 'pass'", submission_id=f"raw-{uuid.uuid4().hex}"
        )
        while str(client.get_job_status(job_id)).rsplit(".", 1)[-1] not in {
            "SUCCEEDED", "FAILED", "STOPPED",
        }:  # fmt: skip
            time.sleep(0.05)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
