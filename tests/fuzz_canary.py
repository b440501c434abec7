"""A module no worker may import: the fuzz suite names it (and names under it) in messages.

Importing it, or calling ``run``, writes the file named by ``DJANGO_RAY_FUZZ_CANARY``; the
fuzz test sets that variable for its worker only and fails if the file ever appears. It is
not a task module (not in ``TASK_MODULES``, not ``<app>.tasks``), so the registry must
refuse every name that points here without importing anything.
"""

from __future__ import annotations

import os
from pathlib import Path

_MARKER = os.environ.get("DJANGO_RAY_FUZZ_CANARY")
if _MARKER:
    Path(_MARKER).write_text(f"imported by pid {os.getpid()}\n")


def run(*args: object, **kwargs: object) -> str:
    if _MARKER:
        with Path(_MARKER).open("a") as marker:
            marker.write(f"run by pid {os.getpid()}\n")
    return "the canary ran"
