"""What reaches Ray task processes: the settings module, the path, the variables the settings
name, and the per-process set-up hook; nothing else of the worker's environment."""

from __future__ import annotations

from typing import Any

import pytest

from django_ray.runners.ray_support import runtime_env
from django_ray.runtime.bootstrap import PROJECT_HOOK_VAR, SETUP_HOOK


def test_only_the_named_variables_reach_ray(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.setenv("DJANGO_RAY_BROKER_PASSWORD", "hunter2")  # unnamed: a secret stays home
    monkeypatch.setenv("DATABASE_URL", "postgres://app@db/app")
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "RAY_ENV_VARS": ["DATABASE_URL"]}

    env = runtime_env()

    assert env["worker_process_setup_hook"] == SETUP_HOOK
    sent = env["env_vars"]
    assert sent["DATABASE_URL"] == "postgres://app@db/app"
    assert sent["DJANGO_SETTINGS_MODULE"] == "testproject.settings"
    assert "PYTHONPATH" in sent
    assert "DJANGO_RAY_BROKER_PASSWORD" not in sent
    assert "hunter2" not in repr(env)


def test_a_projects_own_set_up_hook_runs_after_ours(settings: Any) -> None:
    settings.DJANGO_RAY = {
        **settings.DJANGO_RAY,
        "RAY_RUNTIME_ENV": {"worker_process_setup_hook": "myproject.ray.setup"},
    }
    env = runtime_env()
    assert env["worker_process_setup_hook"] == SETUP_HOOK
    assert env["env_vars"][PROJECT_HOOK_VAR] == "myproject.ray.setup"
