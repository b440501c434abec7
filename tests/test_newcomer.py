"""The newcomer's first hour: a fresh ``startproject``, the README's Quick start, clear errors.

Each test builds a project the way a newcomer does (``django-admin startproject`` and
``startapp``, then the README's settings) in a temporary folder, and runs its
``manage.py`` in a subprocess with nothing of the test suite's settings or environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_worker

README = (ROOT / "README.md").read_text()


def python_block(text: str, first_line: str) -> str:
    """Return the ```python block of ``text`` whose first line starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"one block starting with {first_line!r} expected"
    return found[0]


def project_env(**extra: str) -> dict[str, str]:
    """The environment of a shell in the project: none of the test suite's settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "PYTEST", "CELERY_")) and k != "PYTHONPATH"
    }
    env["PYTHONPATH"] = str(ROOT)  # django_ray and compat, as an installed package gives them
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``startproject mysite`` and ``startapp myapp``, made once and copied per test."""
    root = tmp_path_factory.mktemp("template")
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(root)],
        env=project_env(), cwd=root, check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "manage.py", "startapp", "myapp"],
        env=project_env(), cwd=root, check=True, capture_output=True,
    )  # fmt: skip
    return root


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root

    def settings(self, text: str) -> None:
        """Append ``text`` to ``mysite/settings.py`` (SQLite in the project's folder)."""
        path = self.root / "mysite" / "settings.py"
        path.write_text(path.read_text() + "\n" + textwrap.dedent(text))

    def write(self, relative: str, text: str) -> None:
        (self.root / relative).write_text(textwrap.dedent(text))

    def manage(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args], env=project_env(), cwd=self.root,
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def shell(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.manage("shell", "-v", "0", "-c", textwrap.dedent(code))


@pytest.fixture
def project(template: Path, tmp_path: Path) -> Project:
    root = tmp_path / "project"
    shutil.copytree(template, root)
    return Project(root)


BACKEND = "django_ray.backend.RayTaskBackend"


# -- 1. The system checks run in a plain project --------------------------------------


@pytest.mark.parametrize(
    ("backend", "check_id"),
    [
        ({"QUEUES": ["default", ""]}, "django_ray.E003"),
        ({"OPTIONS": {"TASK_OPTIONS": {"myapp.tasks.resize": 2}}}, "django_ray.E002"),
        ({"OPTIONS": {"TASK_OPTIONS": {"myapp.tasks.resize": {"retries": 3}}}}, "W004"),
    ],
)
def test_manage_py_check_runs_the_backend_checks(
    project: Project, backend: dict, check_id: str
) -> None:
    project.settings(f"""
        INSTALLED_APPS += ["django_ray", "myapp"]
        TASKS = {{"default": {{"BACKEND": {BACKEND!r}, **{backend!r}}}}}
    """)
    done = project.manage("check")
    assert check_id in done.stderr + done.stdout, done.stdout + done.stderr
    assert done.returncode == (0 if check_id.startswith("W") else 1), done.stderr


def test_without_the_app_enqueue_names_the_fix(project: Project) -> None:
    project.settings(f"""
        INSTALLED_APPS += ["myapp"]
        TASKS = {{"default": {{"BACKEND": {BACKEND!r}}}}}
    """)
    project.write(
        "myapp/tasks.py",
        """
        from django.tasks import task


        @task(max_attempts=2)
        def resize(image_id: int) -> None: ...
        """,
    )
    done = project.shell("from myapp.tasks import resize; resize.enqueue(1)")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("django_ray.exceptions.ImproperlyConfiguredRay: "), done.stderr
    assert "add 'django_ray' to INSTALLED_APPS" in last
    assert "RuntimeError" not in done.stderr


def test_without_the_app_check_reports_E001_when_tasks_load_with_the_apps(
    project: Project,
) -> None:
    # Nothing of django-ray runs in a project that does not install it, so its checks
    # can run only when the project's own code imports django.tasks while apps load.
    project.settings(f"""
        INSTALLED_APPS += ["myapp"]
        TASKS = {{"default": {{"BACKEND": {BACKEND!r}}}}}
    """)
    project.write(
        "myapp/tasks.py",
        "from django.tasks import task\n\n\n@task\ndef resize(image_id: int) -> None: ...\n",
    )
    project.write("myapp/models.py", "from myapp import tasks  # noqa: F401\n")
    done = project.manage("check")
    assert done.returncode == 1
    assert "(django_ray.E001) django_ray is not in INSTALLED_APPS." in done.stderr, done.stderr


# -- 2, 3, 5. The README's Quick start, as written ---------------------------------------


def readme_settings() -> str:
    block = python_block(README, "# settings.py")
    assert 'INSTALLED_APPS = [..., "django_ray"]' in block
    return block.replace("[...,", '[*INSTALLED_APPS, "myapp",')


@pytest.mark.slow
def test_the_readme_quick_start_works_in_a_fresh_project(project: Project) -> None:
    project.settings(readme_settings())
    tasks_module = python_block(README, "# myapp/tasks.py")
    assert 'queue_name="high"' in tasks_module and "max_attempts=3" in tasks_module
    project.write("myapp/tasks.py", tasks_module)

    done = project.manage("check")
    assert done.returncode == 0 and "no issues" in done.stdout, done.stdout + done.stderr
    assert project.manage("migrate", "-v", "0").returncode == 0

    # Importing the tasks module (as every worker start does) enqueues nothing.
    done = project.shell("""
        import myapp.tasks
        from django_ray.models import TaskRecord
        print("records", TaskRecord.objects.count())
    """)
    assert done.stdout.split() == ["records", "0"], done.stdout + done.stderr

    enqueue = python_block(README, "# where the work is asked for")
    done = project.shell(enqueue + "\nprint('enqueued', result.id, result.status)\n")
    assert done.returncode == 0, done.stderr
    _, task_id, status = done.stdout.split()
    assert status == "READY"

    worker = project.manage("django_ray_worker", "--queues=default,high", "--sync", "--batch")
    assert worker.returncode == 0, worker.stderr
    done = project.shell(f"""
        from myapp.tasks import resize
        from django_ray.models import TaskRecord
        print(resize.get_result({task_id!r}).status, TaskRecord.objects.count())
    """)
    assert done.stdout.split() == ["SUCCESSFUL", "1"], done.stdout + done.stderr


def test_the_readme_says_queues_and_the_django_version() -> None:
    quick_start = README[README.index("## Quick start") : README.index("## Documentation")]
    assert '"QUEUES"' in python_block(quick_start, "# settings.py")
    assert "InvalidTask" in quick_start and "Django 6.1" in quick_start
    # The snippet that declares tasks enqueues none: the worker imports it at every start.
    assert ".enqueue(" not in python_block(README, "# myapp/tasks.py")


# -- 3. A broken task module is a clear start-up error -----------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"DJANGO_RAY_TASK_MODULES": "tests.tasks,myproject.nosuch"},
            [
                "The task module 'myproject.nosuch' in DJANGO_RAY['TASK_MODULES'] does not exist",
                "Cause: ModuleNotFoundError: No module named 'myproject'",
            ],
        ),
        (
            {"DJANGO_RAY_TASK_MODULES": "tests.tasks,brokenjobs"},
            [
                "The task module 'brokenjobs' in DJANGO_RAY['TASK_MODULES'] failed to import",
                "Cause: ValueError: no API key configured (",
                "brokenjobs.py, line 3)",
            ],
        ),
        (
            {"DJANGO_RAY_EXTRA_APPS": "brokenapp"},
            [
                "The task module 'brokenapp.tasks' of the installed app 'brokenapp' failed to "
                "import",
                "Cause: ModuleNotFoundError: No module named 'not_installed_lib' (",
                "tasks.py, line 1)",
            ],
        ),
        (
            {"DJANGO_RAY_EXTRA_APPS": "syntaxapp"},
            [
                "The task module 'syntaxapp.tasks' of the installed app 'syntaxapp' failed",
                "Cause: SyntaxError: ",
            ],
        ),
    ],
    ids=["missing-task-module", "task-module-raises", "app-tasks-import-missing", "syntax"],
)
def test_a_broken_task_module_stops_the_worker_with_one_clear_message(
    tmp_path: Path, env: dict[str, str], expected: list[str]
) -> None:
    modules = tmp_path / "modules"
    for package in ("brokenapp", "syntaxapp"):
        (modules / package).mkdir(parents=True)
        (modules / package / "__init__.py").write_text("")
    (modules / "brokenapp" / "tasks.py").write_text("import not_installed_lib  # noqa\n")
    (modules / "syntaxapp" / "tasks.py").write_text("def broken(:\n")
    (modules / "brokenjobs.py").write_text(
        "import os\n\nraise ValueError('no API key configured')\n"
    )
    pythonpath = os.pathsep.join([str(ROOT), str(ROOT / "testproject"), str(modules)])
    done = run_worker(
        "--sync", "--batch", timeout=60,
        DJANGO_RAY_DB_NAME=str(tmp_path / "db.sqlite3"), PYTHONPATH=pythonpath, **env,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr  # one clear line, then the cause
    assert lines[0].startswith("CommandError: The worker cannot start. "), done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


# -- 6. Worker logging -------------------------------------------------------------------


@pytest.mark.slow
def test_worker_log_lines_show_once_with_their_prefix_under_debug(project: Project) -> None:
    project.settings(f"""
        INSTALLED_APPS += ["django_ray", "myapp"]
        TASKS = {{"default": {{"BACKEND": {BACKEND!r}}}}}
        assert DEBUG
    """)
    project.write(
        "myapp/tasks.py",
        """
        from django.tasks import task


        @task
        def add(x: int, y: int) -> int:
            return x + y


        @task
        def fail() -> None:
            raise ValueError("expected failure")
        """,
    )
    assert project.manage("migrate", "-v", "0").returncode == 0
    done = project.shell("from myapp.tasks import add, fail; add.enqueue(1, 2); fail.enqueue()")
    assert done.returncode == 0, done.stderr
    worker = project.manage("django_ray_worker", "--sync", "--batch")
    assert worker.returncode == 0, worker.stderr
    prefix = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")
    records = [line for line in worker.stderr.splitlines() if prefix.match(line)]
    # Each task's outcome is told once (django_ray.worker), not again by django.tasks.
    told = [line for line in worker.stderr.splitlines() if "myapp.tasks.add" in line]
    assert len(told) == 1, worker.stderr
    # The failure is logged once with its traceback, under a prefixed ERROR line.
    (error,) = [line for line in records if " ERROR " in line]
    assert " ERROR django.tasks: " in error and "myapp.tasks.fail" in error, worker.stderr
    after_error = worker.stderr.split(error, 1)[1].splitlines()
    assert after_error[1].startswith("Traceback (most recent call last):"), worker.stderr
    assert "ValueError: expected failure" in worker.stderr
    # Nothing else is printed without the prefix: the traceback belongs to the ERROR line.
    traceback_end = next(i for i, line in enumerate(after_error) if line.startswith("ValueError"))
    assert all(prefix.match(line) for line in after_error[traceback_end + 1 :] if line.strip())
    assert all(prefix.match(line) for line in worker.stderr.split(error, 1)[0].splitlines())


def test_the_test_project_logs_each_line_once_with_the_worker_prefix() -> None:
    code = (
        "import logging\n"
        "logging.getLogger('django_ray.worker').info('worker line')\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n"
        "    logging.getLogger('django.tasks').error('task failed', exc_info=True)\n"
        "logging.getLogger('django.tasks').info('task started')\n"
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "testproject" / "manage.py"), "shell", "-v", "0", "-c", code],
        env={**project_env(), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'testproject'}"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert re.fullmatch(r"\S+ \S+ INFO django_ray\.worker: worker line", lines[0]), lines
    assert re.fullmatch(r"\S+ \S+ ERROR django\.tasks: task failed", lines[1]), lines
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero", lines  # not "task started"


# -- 5. compat .delay() from a plain script ----------------------------------------------


def test_the_migration_guides_plain_script_sends_a_task(project: Project) -> None:
    guide = (ROOT / "docs" / "celery-migration.md").read_text()
    script = python_block(guide, "# send.py")
    assert "AppRegistryNotReady" in guide
    project.settings("""
        INSTALLED_APPS += ["django_ray", "myapp"]
        DJANGO_RAY = {"BROKER_URL": "django://"}
    """)
    project.write(
        "myapp/tasks.py",
        "from compat.celery import shared_task\n\n\n@shared_task\ndef add(x, y):\n"
        "    return x + y\n",
    )
    assert project.manage("migrate", "-v", "0").returncode == 0
    project.write("send.py", script.replace('"proj.settings"', '"mysite.settings"'))
    sent = subprocess.run(
        [sys.executable, "send.py"], env=project_env(), cwd=project.root,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    done = project.shell(f"""
        from django_ray.models import TaskRecord
        print(TaskRecord.objects.get(pk={task_id!r}).task_name)
    """)
    assert done.stdout.strip() == "myapp.tasks.add", done.stdout + done.stderr
