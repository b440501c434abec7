"""A batch of ``tests.tasks.journal`` tasks, and what its journal file tells (fault tests).

Each task appends ``start <label> <time>`` and ``end <label> <time>`` to one file, so the
file shows how often each body started and finished, whichever process ran it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from django_ray.models import TaskRecord
from tests import tasks

__all__ = ["Batch", "enqueue_batch", "statuses"]


@dataclass(frozen=True)
class Batch:
    queue: str
    path: Path
    ids: list[str]
    label_of: dict[str, str]  # task id -> label

    def events(self) -> list[tuple[str, str, float]]:
        """``(kind, label, epoch seconds)`` of each line written so far."""
        return [(kind, label, float(t)) for kind, label, t in
                (line.split() for line in self.path.read_text().splitlines())]  # fmt: skip

    def records(self) -> dict[str, TaskRecord]:
        return {r.pk: r for r in TaskRecord.objects.filter(pk__in=self.ids)}


def enqueue_batch(queue: str, directory: Path, count: int, seconds: float) -> Batch:
    """Enqueue ``count`` journal tasks of ``seconds`` each, labelled t0, t1, ..."""
    path = directory / "journal"
    path.touch()
    results = [
        tasks.journal.using(queue_name=queue).enqueue(str(path), f"t{n}", seconds)
        for n in range(count)
    ]
    return Batch(
        queue, path, [r.id for r in results], {r.id: f"t{n}" for n, r in enumerate(results)}
    )


def statuses(ids: list[str]) -> Counter[str]:
    return Counter(TaskRecord.objects.filter(pk__in=ids).values_list("status", flat=True))
