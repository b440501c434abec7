"""Tasks of the admin's browser test (tests/test_admin_browser.py)."""

from __future__ import annotations

from pathlib import Path

from django.tasks import task


class NotReadyYet(Exception):
    """The input the task needs is not there yet."""


@task
def import_invoices(path: str) -> dict[str, int]:
    """Fail until ``path`` exists (an upstream file that arrives late), then succeed."""
    source = Path(path)
    if not source.exists():
        raise NotReadyYet(f"{source.name} has not arrived yet")
    return {"invoices": len(source.read_text().split())}
