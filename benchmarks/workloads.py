"""The CPU-bound body every benchmark runs, so Celery and django-ray do the same work."""

from __future__ import annotations

import time


def burn_cpu(seconds: float = 0.020) -> int:
    """Spin for ``seconds`` of wall time; return how many loop turns that took."""
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n
