"""System checks: misconfiguration reported with stable ids and a hint that states the fix."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks

from django_ray import conf
from django_ray.transports.kinds import kind_of

__all__ = ["check_backend", "check_settings"]

KNOWN_BROKERS = {"django", "redis", "amqp", "memory", "sqs", "mongodb", "filesystem"}


def check_backend(backend: Any) -> list[checks.CheckMessage]:
    """Check one ``RayTaskBackend`` (called from ``backend.check()``)."""
    from django_ray.conf import RAY_OPTION_KEYS

    errors: list[checks.CheckMessage] = []
    if not apps.is_installed("django_ray"):
        errors.append(
            checks.Error(
                "django_ray is not in INSTALLED_APPS.",
                hint="Add 'django_ray' to INSTALLED_APPS so its models and worker are available.",
                id="django_ray.E001",
            )
        )
    options = backend.options.get("TASK_OPTIONS", {})
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        errors.append(
            checks.Error(
                f"TASKS[{backend.alias!r}]['OPTIONS']['TASK_OPTIONS'] must map task paths "
                "to dicts.",
                hint="Use {'myapp.tasks.func': {'num_cpus': 2}}.",
                id="django_ray.E002",
            )
        )
    elif unknown := sorted(
        {key for values in options.values() for key in values} - RAY_OPTION_KEYS
    ):
        errors.append(
            checks.Warning(
                f"TASKS[{backend.alias!r}]['OPTIONS']['TASK_OPTIONS'] has unknown Ray "
                f"option(s) {unknown!r}; they are ignored.",
                hint=f"Use only {', '.join(sorted(RAY_OPTION_KEYS))}; retries are django-ray's "
                "(max_attempts), not Ray's.",
                id="django_ray.W004",
            )
        )
    for queue in backend.queues:
        if not isinstance(queue, str) or not queue:
            errors.append(
                checks.Error(
                    f"Queue name {queue!r} in TASKS[{backend.alias!r}]['QUEUES'] is not valid.",
                    hint="Queue names are non-empty strings.",
                    id="django_ray.E003",
                )
            )
    return errors


@checks.register(checks.Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Check ``settings.DJANGO_RAY``."""
    errors: list[checks.CheckMessage] = []
    user = getattr(settings, "DJANGO_RAY", {})
    if not isinstance(user, dict):
        return [
            checks.Error(
                "DJANGO_RAY must be a dict.",
                hint="Set DJANGO_RAY = {'BROKER_URL': 'django://'} or remove it.",
                id="django_ray.E010",
            )
        ]
    unknown = sorted(set(user) - set(conf.DEFAULTS))
    if unknown:
        errors.append(
            checks.Error(
                f"Unknown DJANGO_RAY setting(s): {', '.join(unknown)}.",
                hint=f"Known settings: {', '.join(sorted(conf.DEFAULTS))}.",
                id="django_ray.E011",
            )
        )
    url = conf.broker_url()
    kind = kind_of(url) if "://" in url else ""
    if kind not in KNOWN_BROKERS:
        errors.append(
            checks.Error(
                f"Broker URL {url.split('@')[-1]!r} has no transport django-ray knows.",
                hint="Use django://, redis://host:6379/0 or amqp://user:password@host:5672//.",
                id="django_ray.E012",
            )
        )
    if not isinstance(conf.get("TASK_MODULES"), list | tuple):
        errors.append(
            checks.Error(
                "DJANGO_RAY['TASK_MODULES'] must be a list of module paths.",
                hint="Use ['myproject.jobs'].",
                id="django_ray.E013",
            )
        )
    timeout = conf.get("VISIBILITY_TIMEOUT")
    if not isinstance(timeout, int | float) or timeout <= 0:
        errors.append(
            checks.Error(
                f"DJANGO_RAY['VISIBILITY_TIMEOUT'] must be a positive number, not {timeout!r}.",
                hint="Set it above your longest task's run time, e.g. 3600.",
                id="django_ray.E014",
            )
        )
    return errors
