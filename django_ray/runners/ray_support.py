"""What the Ray runners share: the runtime environment and per-task Ray options.

Ray task processes must set Django up with the worker's settings: the settings module,
``sys.path`` and the variables the settings name (``RAY_ENV_VARS``) travel in a
``runtime_env`` (nothing else of the worker's environment: it may hold secrets), with
``runtime.bootstrap``'s per-process set-up hook, which prepares each Ray worker process
(Django, then the task registry) before it unpickles anything.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from django_ray import conf
from django_ray.exceptions import ImproperlyConfiguredRay
from django_ray.message import TaskMessage
from django_ray.runtime.bootstrap import PROJECT_HOOK_VAR, SETUP_HOOK

logger = logging.getLogger(__name__)

__all__ = ["ray_options_for", "ray_task_options", "runtime_env"]


def task_env() -> dict[str, str]:
    """Return the environment variables a Ray task process needs to set Django up."""
    names = {"DJANGO_SETTINGS_MODULE", PROJECT_HOOK_VAR, *conf.get("RAY_ENV_VARS")}
    env = {name: os.environ[name] for name in names if name in os.environ}
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def runtime_env(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the runtime_env for task processes: configured base, then Django's env vars.

    The per-process set-up hook is always ours; a project's own hook (a dotted path in
    ``RAY_RUNTIME_ENV["worker_process_setup_hook"]``) runs right after it.
    """
    base: dict[str, Any] = dict(conf.get("RAY_RUNTIME_ENV") or {})
    env_vars = {**task_env(), **base.get("env_vars", {})}
    if extra:
        env_vars.update(extra.get("env_vars", {}))
        base.update({k: v for k, v in extra.items() if k != "env_vars"})
    own_hook = base.pop("worker_process_setup_hook", None)
    if own_hook is not None:
        if not isinstance(own_hook, str):
            raise ImproperlyConfiguredRay(
                "DJANGO_RAY['RAY_RUNTIME_ENV']['worker_process_setup_hook'] must be a dotted "
                f"path (django-ray runs it after its own set-up), not {own_hook!r}."
            )
        env_vars[PROJECT_HOOK_VAR] = own_hook
    base["env_vars"] = env_vars
    base["worker_process_setup_hook"] = SETUP_HOOK
    return base


RAY_TASK_KEYS = ("num_cpus", "num_gpus", "memory", "resources", "runtime_env")
JOB_ONLY_KEYS = (
    "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory", "entrypoint_resources",
)  # fmt: skip
_warned: set[str] = set()  # tasks whose ignored Ray options were logged once


def ray_options_for(message: TaskMessage) -> dict[str, Any]:
    """Return the Ray options the task of ``message`` declares (empty when none)."""
    from django_ray import registry
    from django_ray.exceptions import NotRegistered

    try:
        entry = registry.resolve(message.task)
    except NotRegistered:
        return {}  # execute() records the refusal; run it with default resources
    options: dict[str, Any] = dict(getattr(entry.obj, "ray_options", None) or {})
    if entry.kind == "django":
        backend = entry.obj.get_backend()
        if hasattr(backend, "ray_options_for"):
            options = backend.ray_options_for(entry.obj)
    return options


def ray_task_options(message: TaskMessage) -> dict[str, Any]:
    """Return the options of ``message``'s task that apply to a Ray task (``RAY_TASK_KEYS``).

    Anything else (``entrypoint_*``, or ``max_retries`` slipped into ``TASK_OPTIONS``) is
    left out: Ray's own retries stay off, retrying is ours.
    """
    options = ray_options_for(message)
    ignored = sorted(set(options) - set(RAY_TASK_KEYS) - set(JOB_ONLY_KEYS))
    if ignored and message.task not in _warned:
        _warned.add(message.task)
        logger.warning("Ignoring Ray option(s) %s of task %s.", ", ".join(ignored), message.task)
    return {key: value for key, value in options.items() if key in RAY_TASK_KEYS}
