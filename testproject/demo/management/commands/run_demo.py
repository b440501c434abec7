"""Enqueue the example tasks, run a real worker over them, print what each returned.

It ends with how to browse the records: the demo's admin user (created on the demo's SQLite
database only, with a throwaway password), the one command that serves the admin with its
styles, and the command that runs the same tasks on a local Ray with its dashboard.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connection
from django.tasks import TaskResultStatus

from demo import tasks

# A throwaway login for the demo's own SQLite file, never for a real database.
ADMIN_USER = "demo"
ADMIN_PASSWORD = "demo"  # printed on purpose
ADMIN_ADDRESS = "127.0.0.1:8000"
DASHBOARD_URL = "http://127.0.0.1:8265"


class Command(BaseCommand):
    help = "Run the django-ray demo on the embedded default (SQLite + django://)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--mode", default="sync", choices=["sync", "local"],
                            help="Worker mode for the demo (default: sync).")  # fmt: skip
        parser.add_argument(
            "--admin-user",
            action="store_true",
            help="Only migrate and create the demo admin user, then say how to browse "
            "the records (what `make admin` runs first).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", verbosity=0)
        if options["admin_user"]:
            self.ensure_admin_user()
            self.how_to_browse(mode=None)
            return
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
            f"\n{len(results) - failed} succeeded, {failed} failed as expected (divide by zero)."
        )
        self.ensure_admin_user()
        self.how_to_browse(mode=options["mode"])

    def ensure_admin_user(self) -> None:
        """Create the demo's superuser, on an SQLite database only (the demo's own file)."""
        if connection.vendor != "sqlite":
            self.stdout.write(
                f"\nThe database is {connection.vendor}, not the demo's SQLite file: no demo "
                "user was created. Make one with: python manage.py createsuperuser"
            )
            return
        users = get_user_model()._default_manager
        user = users.filter(username=ADMIN_USER).first()
        if user is None:
            users.create_superuser(ADMIN_USER, password=ADMIN_PASSWORD)
        elif not (user.is_superuser and user.is_active and user.check_password(ADMIN_PASSWORD)):
            user.is_staff = user.is_superuser = user.is_active = True
            user.set_password(ADMIN_PASSWORD)
            user.save()

    def how_to_browse(self, mode: str | None) -> None:
        """Print the one command that serves the admin, and the one that runs on Ray."""
        name = connection.settings_dict["NAME"]
        self.stdout.write(
            f"\nBrowse the records in the admin (user {ADMIN_USER!r}, password "
            f"{ADMIN_PASSWORD!r}: a throwaway login on the demo database {name} only):\n"
            "  make admin\n"
            "  which is: cd testproject && ../.venv/bin/python manage.py run_demo --admin-user\n"
            "            DJANGO_RAY_EXTRA_APPS=django.contrib.staticfiles ../.venv/bin/python "
            f"manage.py runserver --insecure {ADMIN_ADDRESS}\n"
            "  (staticfiles' --insecure serves the admin's styles with DEBUG = False)\n"
            f"  then open http://{ADMIN_ADDRESS}/admin/django_ray/taskrecord/"
        )
        if mode != "local":
            self.stdout.write(
                "\nRun the same tasks on Ray (a local Ray instance, no cluster needed):\n"
                "  cd testproject && ../.venv/bin/python manage.py run_demo --mode=local\n"
                f"  The Ray dashboard is at {DASHBOARD_URL} (loopback only) while the worker "
                "runs;\n  to keep it up, run a worker until Ctrl-C:\n"
                "  cd testproject && ../.venv/bin/python manage.py django_ray_worker "
                "--queue=default --local"
            )
        else:
            self.stdout.write(
                f"\nThese tasks ran on a local Ray instance; its dashboard ({DASHBOARD_URL}) "
                "closed with the worker. To keep one up, run a worker until Ctrl-C:\n"
                "  cd testproject && ../.venv/bin/python manage.py django_ray_worker "
                "--queue=default --local"
            )
