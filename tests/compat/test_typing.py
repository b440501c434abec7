"""``Task`` is generic over its function's parameters: mypy checks ``.delay()`` calls."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT

SNIPPET = textwrap.dedent(
    """
    from typing import Any

    from compat.celery import Celery, Task, shared_task

    app = Celery("typing_probe")

    @shared_task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True, max_retries=2)
    def greet(self: Task[Any, Any], name: str) -> str:
        return name

    add.delay(1, 2)
    greet.delay("ok")
    total: int = add(1, 2)
    add.delay("one", 2)
    greet.delay(1)
    """
)


def test_delay_arguments_are_type_checked(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(SNIPPET)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "testproject")])}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), str(probe)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, done.stdout + done.stderr
    assert (
        'Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"' in errors[0]
    )
    assert (
        'Argument 1 to "delay" of "Task" has incompatible type "int"; expected "str"' in errors[1]
    )
