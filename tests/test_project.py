"""The project around the code: packaging, the README's two commands, CI, migrations, demo."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.conftest import ROOT, worker_env


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_is_pep621_with_the_dependencies() -> None:
    project = pyproject()["project"]
    assert project["name"] and project["version"]
    assert project["requires-python"] == ">=3.12"
    deps = " ".join(project["dependencies"])
    for needed in ("Django>=", "ray[default]", "kombu", "click"):
        assert needed in deps, needed
    extras = project["optional-dependencies"]
    assert any(d.startswith("redis") for d in extras["redis"])
    assert any(d.startswith("psycopg") for d in extras["psycopg"])
    test_extra = " ".join(extras["test"])
    assert "pytest" in test_extra and "pytest-django" in test_extra


def test_the_django_requirement_is_what_the_code_needs() -> None:
    import inspect

    import django
    from django.tasks import task
    from packaging.requirements import Requirement

    requirements = [Requirement(d) for d in pyproject()["project"]["dependencies"]]
    (required,) = [r for r in requirements if r.name.lower() == "django"]
    # @task(max_attempts=3) needs a decorator that passes extra options to the backend's
    # task class: Django 6.1's does, 6.0's (6.0.10 included) raises TypeError.
    assert any(p.kind is p.VAR_KEYWORD for p in inspect.signature(task).parameters.values())
    assert required.specifier.contains("6.1") and required.specifier.contains(django.__version__)
    assert not required.specifier.contains("6.0.10")


def test_tool_configuration_lives_in_pyproject() -> None:
    tool = pyproject()["tool"]
    for name in ("ruff", "mypy", "coverage"):
        assert name in tool, name
    assert tool["pytest"]["ini_options"]["DJANGO_SETTINGS_MODULE"] == "testproject.settings"
    assert tool["setuptools"]["packages"]["find"]["include"] == ["django_ray*", "compat*"]
    assert (ROOT / "setup.cfg").is_file()
    for folder in ("django_ray", "compat", "tests", "docs", "benchmarks"):
        assert (ROOT / folder).is_dir(), folder


def test_readme_starts_with_exactly_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", readme, re.S)
    assert first_block is not None
    assert readme.index("```") < 200, "the commands come first"
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    commands = [c for c in commands if c]
    assert commands == ["make demo", "make test"]


def test_the_two_commands_create_a_virtualenv_and_install_everything() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = dict(re.findall(r"^([a-z-]+):([^\n]*)$", makefile, re.M))
    assert "setup" in targets["demo"] and "setup" in targets["test"]
    assert "-m venv" in makefile
    assert "pip install" in makefile and ".[dev]" in makefile
    assert "pytest" in makefile and "run_demo" in makefile


def test_ci_runs_lint_checks_migrations_and_the_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    for service in ("PostgreSQL", "Redis", "RabbitMQ"):
        assert service in ci
    assert "make test" in ci  # the README's test command
    makefile = (ROOT / "Makefile").read_text()
    for step in ("ruff check", "ruff format --check", "manage.py check",
                 "makemigrations --check"):  # fmt: skip
        assert step in ci or step in makefile, step
    for target in ("lint", "check", "test"):
        assert f"make {target}" in ci, target


@pytest.mark.django_db
def test_migrations_are_checked_in_and_complete() -> None:
    call_command("makemigrations", "django_ray", "--check", "--dry-run", verbosity=0)
    migrations = sorted(p.name for p in (ROOT / "django_ray" / "migrations").glob("0*.py"))
    assert migrations[0] == "0001_initial.py"
    # One linear history: 0001, 0002, ... with no gaps or two leaves.
    assert [int(name[:4]) for name in migrations] == list(range(1, len(migrations) + 1))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_demo_runs_real_tasks_and_exits_cleanly(tmp_path: Path) -> None:
    env = worker_env(
        DJANGO_RAY_DB_NAME=str(tmp_path / "demo.sqlite3"), DJANGO_RAY_BROKER="django://"
    )
    env.pop("DJANGO_RAY_DB", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "testproject" / "manage.py"), "run_demo"],
        env=env, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Results:" in out
    assert re.search(r"add\s+SUCCESSFUL\s+5", out), out
    assert re.search(r"greet\s+SUCCESSFUL\s+'Hello, Ray!'", out), out
    assert re.search(r"divide\s+FAILED\s+raised builtins.ZeroDivisionError", out), out
    assert "4 succeeded, 1 failed" in out


def test_only_the_transport_layer_imports_kombu() -> None:
    importers = set()
    for path in (ROOT / "django_ray").rglob("*.py"):
        if re.search(r"^\s*(from|import) kombu\b", path.read_text(), re.M):
            importers.add(path.relative_to(ROOT).as_posix())
    assert importers <= {
        "django_ray/transport.py",
        "django_ray/transports/__init__.py",
        "django_ray/transports/django.py",
        "django_ray/transports/redis.py",
        "django_ray/transports/acks.py",
        # Celery's pidbox (revoke from Celery clients): a known exception, see control.py.
        "django_ray/celery/control.py",
    }, importers


def test_a_missing_service_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.services import require

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not reachable"):
        require("Nothing", "127.0.0.1", 1)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide it"):
        require("Nothing", "127.0.0.1", 1)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(120)
def test_the_first_benchmark_runs() -> None:
    from tests.services import require_redis

    require_redis()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tasks", "5"],
        capture_output=True, text=True, timeout=110, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sync / django://" in done.stdout and "sync / redis://" in done.stdout
    assert "drain/s" in done.stdout


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(120)
def test_the_demo_admin_is_one_command_away_with_its_styles_and_login(tmp_path: Path) -> None:
    import http.cookiejar
    import time
    import urllib.parse
    import urllib.request

    env = worker_env(DJANGO_RAY_DB_NAME=str(tmp_path / "demo.sqlite3"))
    env.pop("DJANGO_RAY_DB", None)
    manage = str(ROOT / "testproject" / "manage.py")
    # What `make admin` runs first: migrate and the throwaway user, on the SQLite file only.
    done = subprocess.run(
        [sys.executable, manage, "run_demo", "--admin-user"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "user 'demo', password 'demo'" in out and "make admin" in out, out
    assert "DJANGO_RAY_EXTRA_APPS=django.contrib.staticfiles" in out, out
    assert "runserver --insecure 127.0.0.1:8000" in out, out
    assert "run_demo --mode=local" in out and "http://127.0.0.1:8265" in out, out
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^admin: setup\n(\t.*\n)*\t.*run_demo --admin-user\n", makefile, re.M)
    assert "runserver --insecure 127.0.0.1:8000" in makefile
    assert "DJANGO_RAY_EXTRA_APPS=django.contrib.staticfiles" in makefile

    # The second command, on a free port: the styles are served and demo/demo logs in.
    port = free_port()
    env["DJANGO_RAY_EXTRA_APPS"] = "django.contrib.staticfiles"
    server = subprocess.Popen(
        [sys.executable, manage, "runserver", "--insecure", "--noreload", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        deadline = time.monotonic() + 30
        while True:
            try:
                css = opener.open(f"{base}/static/admin/css/base.css", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "runserver did not answer"
                time.sleep(0.2)
        assert css.status == 200 and b"{" in css.read()
        page = opener.open(f"{base}/admin/login/", timeout=5).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, page
        form = {
            "csrfmiddlewaretoken": token.group(1),
            "username": "demo",
            "password": "demo",
            "next": "/admin/django_ray/taskrecord/",
        }
        request = urllib.request.Request(
            f"{base}/admin/login/?next=/admin/django_ray/taskrecord/",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Referer": f"{base}/admin/login/"},
        )
        answer = opener.open(request, timeout=10)
        assert answer.geturl().endswith("/admin/django_ray/taskrecord/"), answer.geturl()
        assert "Select task to view" in answer.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=10)
