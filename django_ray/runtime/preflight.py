"""Preflight: prove at start that the Ray cluster sees the same project as the worker.

In ``--cluster`` and Ray Job mode, task processes run where the worker cannot see: on
other nodes, set up from what reaches them (the ``runtime_env``, the image, the node's
own environment). Before it takes a message, the worker runs one small Ray task (one job
in job mode) that sets the project up exactly as a task process does
(``bootstrap.ensure_ready``) and describes what it sees: the settings module,
``INSTALLED_APPS``, the databases (engine and name, never a password or host credential),
whether it can reach them, the task registry, and the Python, Django and django-ray
versions. ``compare()`` holds that against the worker's own view:

* **errors** (the worker refuses to start): the process could not be set up; a different
  settings module; apps missing; tasks the worker can run that the cluster cannot; other
  databases; a database the cluster cannot reach;
* **warnings**: other Python, Django or django-ray versions; apps or tasks only the cluster
  has.

Each difference comes with the fix: ``DJANGO_RAY["RAY_ENV_VARS"]`` for variables the
settings read, ``DJANGO_RAY["RAY_RUNTIME_ENV"]`` (``working_dir``, ``py_modules``) for code,
the same image on every node. ``python manage.py django_ray_preflight`` runs it alone.

Run as ``python -m django_ray.runtime.preflight``, it prints its description as one tagged
line (job mode's entrypoint).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "REPORT_TAG",
    "Report",
    "as_job",
    "check",
    "compare",
    "describe_process",
    "in_cluster",
    "main",
]

# The job entrypoint prints its description after this tag (one line of JSON).
REPORT_TAG = "django-ray-preflight:"


def describe_process() -> dict[str, Any]:
    """Set this process up as a task process does, and describe what it sees."""
    view: dict[str, Any] = {
        "node": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "settings_module": os.environ.get("DJANGO_SETTINGS_MODULE"),
    }
    from django_ray.exceptions import ProcessSetupFailed
    from django_ray.runtime import bootstrap

    try:
        bootstrap.ensure_ready()
    except ProcessSetupFailed as e:
        view["setup_error"] = str(e)
        return view
    import django
    from django.apps import apps
    from django.conf import settings
    from django.db import connections

    from django_ray import registry

    view.update(
        settings_module=os.environ.get("DJANGO_SETTINGS_MODULE")
        or getattr(settings, "SETTINGS_MODULE", None),
        django=django.get_version(),
        django_ray=_version(),
        installed_apps=[config.name for config in apps.get_app_configs()],
        tasks=registry.known_names(),
        databases={
            alias: {"engine": conf["ENGINE"], "name": str(conf.get("NAME") or "")}
            for alias, conf in settings.DATABASES.items()
        },
    )
    unreachable = {}
    for alias in settings.DATABASES:
        try:
            connections[alias].ensure_connection()
        except Exception as e:  # what the task processes would meet
            unreachable[alias] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    view["unreachable_databases"] = unreachable
    return view


@dataclass
class Report:
    """The cluster's view against the worker's: what breaks tasks, and what may."""

    local: dict[str, Any]
    remote: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "warnings": self.warnings,
            "worker": self.local,
            "cluster": self.remote,
        }

    def text(self) -> str:
        where = f"{self.remote.get('node', '?')} (pid {self.remote.get('pid', '?')})"
        lines = [f"Preflight: a Ray task process on {where} set the project up."]
        lines += [f"  ERROR: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.ok:
            lines.append("  The cluster sees the same project as this worker.")
        return "\n".join(lines)


ENV_FIX = (
    "The cluster's processes do not get this worker's environment: list the variables your "
    "settings read in DJANGO_RAY['RAY_ENV_VARS'] (DJANGO_SETTINGS_MODULE and PYTHONPATH are "
    "sent already)"
)
CODE_FIX = (
    "ship the project's code to the cluster (DJANGO_RAY['RAY_RUNTIME_ENV'] with working_dir "
    "or py_modules), or run the same image on every node"
)


def compare(local: dict[str, Any], remote: dict[str, Any]) -> Report:
    """Hold the cluster's view (``remote``) against the worker's (``local``)."""
    report = Report(local=local, remote=remote)
    if remote.get("setup_error"):
        report.errors.append(
            f"The task process could not set the project up: {remote['setup_error']} "
            f"Fix: {ENV_FIX}; {CODE_FIX}."
        )
        return report
    if remote.get("settings_module") != local.get("settings_module"):
        report.errors.append(
            f"Settings module differs: worker {local.get('settings_module')!r}, cluster "
            f"{remote.get('settings_module')!r}. Fix: {ENV_FIX}."
        )
    _sets(
        report, "installed app", local.get("installed_apps"), remote.get("installed_apps"),
        fix=ENV_FIX + "; " + CODE_FIX,
    )  # fmt: skip
    _sets(report, "task", local.get("tasks"), remote.get("tasks"), fix=ENV_FIX + "; " + CODE_FIX)
    if remote.get("databases") != local.get("databases"):
        report.errors.append(
            f"Databases differ: worker {_databases(local)}, cluster {_databases(remote)}: task "
            f"records would be written elsewhere. Fix: {ENV_FIX} (e.g. DATABASE_URL)."
        )
    for alias, error in (remote.get("unreachable_databases") or {}).items():
        report.errors.append(
            f"The cluster cannot reach database {alias!r} ({error}). Task processes write their "
            "records there: make the database reachable from every Ray node (host, port, "
            "firewall, credentials in the environment)."
        )
    for key, label in (("python", "Python"), ("django", "Django"), ("django_ray", "django-ray")):
        if remote.get(key) != local.get(key):
            report.warnings.append(
                f"{label} versions differ: worker {local.get(key)}, cluster {remote.get(key)}."
            )
    return report


def _sets(report: Report, what: str, local: Any, remote: Any, *, fix: str) -> None:
    mine, theirs = set(local or ()), set(remote or ())
    if missing := sorted(mine - theirs):
        report.errors.append(
            f"The cluster lacks {len(missing)} {what}(s) this worker has: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. Fix: {fix}."
        )
    if extra := sorted(theirs - mine):
        report.warnings.append(
            f"The cluster has {what}(s) this worker lacks: {', '.join(extra[:10])}"
            f"{' ...' if len(extra) > 10 else ''}."
        )


def _databases(view: dict[str, Any]) -> str:
    dbs = view.get("databases") or {}
    return ", ".join(
        f"{a}={d.get('engine', '?').rsplit('.', 1)[-1]}:{d.get('name')}" for a, d in dbs.items()
    )


PREFLIGHT_TIMEOUT_S = 120.0


def check(remote: dict[str, Any]) -> Report:
    """Compare ``remote`` with this process's view; raise ``PreflightFailed`` on errors."""
    import logging

    from django_ray.exceptions import PreflightFailed

    report = compare(describe_process(), remote)
    log = logging.getLogger("django_ray.worker")
    for warning in report.warnings:
        log.warning("Preflight: %s", warning)
    if not report.ok:
        raise PreflightFailed(report.text())
    return report


def in_cluster() -> dict[str, Any]:
    """Describe a fresh Ray task process of the connected cluster (the Ray modes)."""
    import ray

    remote = ray.remote(num_cpus=0, max_retries=0)(describe_process)
    try:
        view: dict[str, Any] = ray.get(remote.remote(), timeout=PREFLIGHT_TIMEOUT_S)
        return view
    except Exception as e:  # e.g. django_ray itself is not importable on the node
        text = " ".join(str(e).split())[:500]
        return {"setup_error": f"The preflight task failed on the cluster: {text}"}


def as_job(client: Any, runtime_env: dict[str, Any], *, poll: float = 0.2) -> dict[str, Any]:
    """Describe a Ray job's entrypoint process (Ray Job mode), run with ``runtime_env``."""
    import time
    import uuid

    job_id = f"django-ray-preflight-{uuid.uuid4().hex[:12]}"
    client.submit_job(
        entrypoint=f"{sys.executable} -m django_ray.runtime.preflight",
        submission_id=job_id,
        runtime_env=runtime_env,
    )
    deadline = time.monotonic() + PREFLIGHT_TIMEOUT_S
    status = ""
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id)).rsplit(".", 1)[-1]
        if status in {"SUCCEEDED", "FAILED", "STOPPED"}:
            break
        time.sleep(poll)
    else:
        client.stop_job(job_id)
        return {"setup_error": f"The preflight job {job_id} did not finish in time."}
    logs = str(client.get_job_logs(job_id) or "")
    for line in logs.splitlines():
        if line.startswith(REPORT_TAG):
            return dict(json.loads(line[len(REPORT_TAG) :]))
    tail = " ".join(logs.split())[-500:]
    return {"setup_error": f"The preflight job {job_id} ended {status}: {tail}"}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("django-ray-tasks")
    except metadata.PackageNotFoundError:
        return "unknown"


def main() -> int:
    """The job entrypoint: print this process's description as one tagged line."""
    print(REPORT_TAG + json.dumps(describe_process()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
