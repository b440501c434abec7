"""Execution modes: a registry of runners keyed by mode name, imported lazily.

``import ray`` happens only when a Ray mode is chosen.
"""

from __future__ import annotations

import importlib

from django_ray.exceptions import ModeNotAvailable
from django_ray.runners.base import BaseRunner, Completion

__all__ = ["MODES", "BaseRunner", "Completion", "get_runner_class"]

MODES: dict[str, str] = {
    "sync": "django_ray.runners.sync:SyncRunner",
    "local": "django_ray.runners.local:LocalRunner",
    "cluster": "django_ray.runners.cluster:ClusterRunner",
    "job": "django_ray.runners.job:JobRunner",
}


def get_runner_class(mode: str) -> type[BaseRunner]:
    """Return the runner class for ``mode`` (sync, local, cluster or job)."""
    try:
        path = MODES[mode]
    except KeyError:
        raise ModeNotAvailable(
            f"Unknown execution mode {mode!r}; choose one of {', '.join(MODES)}."
        ) from None
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise ModeNotAvailable(
                f"The {mode!r} mode is not available yet in this build; use --sync."
            ) from e
        raise ModeNotAvailable(
            f"The {mode!r} mode needs the {e.name!r} package: pip install 'ray[default]'."
        ) from e
    runner: type[BaseRunner] = getattr(module, attr)
    return runner
