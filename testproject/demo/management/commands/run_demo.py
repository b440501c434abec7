"""Enqueue the example tasks, run a real worker over them, print what each returned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.tasks import TaskResultStatus

from demo import tasks


class Command(BaseCommand):
    help = "Run the django-ray demo on the embedded default (SQLite + django://)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--mode", default="sync", choices=["sync", "local"],
                            help="Worker mode for the demo (default: sync).")  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", verbosity=0)
        results = [
            tasks.add.enqueue(2, 3),
            tasks.word_count.enqueue("the quick brown fox jumps over the lazy dog the end"),
            tasks.checksum.enqueue("django-ray"),
            tasks.greet.enqueue("Ray"),
            tasks.divide.enqueue(1, 0),
        ]
        self.stdout.write(
            f"Enqueued {len(results)} tasks; starting a --{options['mode']} worker.\n"
        )
        manage = Path(sys.argv[0]).resolve()
        subprocess.run(
            [sys.executable, str(manage), "django_ray_worker", "--queue=default",
             f"--{options['mode']}", "--batch"],
            check=True,
        )  # fmt: skip
        self.stdout.write("\nResults:")
        failed = 0
        for result in results:
            result.refresh()
            if result.status == TaskResultStatus.SUCCESSFUL:
                shown = repr(result.return_value)
            else:
                failed += 1
                shown = f"raised {result.errors[-1].exception_class_path}"
            self.stdout.write(f"  {result.task.name:<12} {result.status:<10} {shown}")
        self.stdout.write(
            f"\n{len(results) - failed} succeeded, {failed} failed as expected "
            "(divide by zero). Browse them in the admin: TaskRecord."
        )
