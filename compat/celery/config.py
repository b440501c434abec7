"""``app.conf``: Celery's lower-case settings, read lazily from the configured object.

``config_from_object('django.conf:settings', namespace='CELERY')`` makes
``conf.task_always_eager`` read ``settings.CELERY_TASK_ALWAYS_EAGER`` at the moment it is
read (so ``override_settings`` works). Values set on ``conf`` itself win. The broker is
django-ray's (``DJANGO_RAY["BROKER_URL"]``, then ``CELERY_BROKER_URL``): setting it on
``conf`` would publish nowhere, so that raises.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from django.utils.module_loading import import_string

from compat.celery.exceptions import ImproperlyConfigured, NotSupported
from django_ray.celery.client import SEND_DEFAULTS

__all__ = ["DEFAULTS", "Settings", "check_producer_settings"]

DEFAULTS: dict[str, Any] = {
    **SEND_DEFAULTS,  # the settings a message is built with (django_ray.celery.client)
    "task_always_eager": False,
    "task_eager_propagates": False,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_acks_late": False,
    "task_ignore_result": False,
    "task_track_started": False,
    "task_default_rate_limit": None,
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_protocol": 2,
    "task_annotations": None,
    "task_compression": None,
    "result_expires": 86400,
    "timezone": None,
    "enable_utc": True,
}
# Settings whose non-default value changes what a producer sends, and that we do not do.
UNSUPPORTED = {
    "task_serializer": ("json",),
    "task_protocol": (2,),
    "task_annotations": (None, {}, []),
    "task_compression": (None,),
}
# Where these live instead (so a value set on app.conf is not silently unused).
DJANGO_RAY_OWNED = {
    "broker_url": "DJANGO_RAY['BROKER_URL'] or CELERY_BROKER_URL",
    "result_backend": "DJANGO_RAY['RESULT_BACKEND'] or CELERY_RESULT_BACKEND",
    "broker_transport_options": "DJANGO_RAY['BROKER_TRANSPORT_OPTIONS']",
}


class Settings(MutableMapping[str, Any]):
    """A Celery app's configuration: explicit values, then the source object, then defaults."""

    def __init__(self) -> None:
        self._overrides: dict[str, Any] = {}
        self._source: Any = None
        self._namespace: str | None = None

    def configure(self, obj: Any, namespace: str | None = None) -> None:
        """Read settings from ``obj`` (an object, or a ``'module:attr'`` path imported lazily)."""
        self._source = obj
        self._namespace = namespace

    def _source_object(self) -> Any:
        if isinstance(self._source, str):
            path = self._source.replace(":", ".")
            try:
                self._source = import_string(path)
            except ImportError as e:
                raise ImproperlyConfigured(
                    f"Cannot import the Celery configuration {path!r}; check the path "
                    "given to config_from_object()."
                ) from e
        return self._source

    def _from_source(self, key: str) -> tuple[bool, Any]:
        source = self._source_object()
        if source is None:
            return False, None
        names = [f"{self._namespace}_{key.upper()}"] if self._namespace else [key, key.upper()]
        for name in names:
            if isinstance(source, dict):
                if name in source:
                    return True, source[name]
            elif hasattr(source, name):
                return True, getattr(source, name)
        return False, None

    def __getitem__(self, key: str) -> Any:
        if key in DJANGO_RAY_OWNED:
            return self._django_ray_value(key)
        if key in self._overrides:
            return self._overrides[key]
        found, value = self._from_source(key)
        if found:
            return value
        if key in DEFAULTS:
            return DEFAULTS[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in DJANGO_RAY_OWNED:
            raise NotSupported(
                f"Setting {key!r} on app.conf is not supported: django-ray reads it from "
                f"{DJANGO_RAY_OWNED[key]}."
            )
        self._overrides[key] = value

    def __delitem__(self, key: str) -> None:
        del self._overrides[key]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(DEFAULTS) | set(self._overrides)))

    def __len__(self) -> int:
        return len(set(DEFAULTS) | set(self._overrides))

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"Unknown Celery setting {key!r}.") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key.startswith("_"):
            object.__setattr__(self, key, value)
        else:
            self[key] = value

    def _django_ray_value(self, key: str) -> Any:
        from django_ray import conf

        if key == "broker_url":
            return conf.broker_url()
        if key == "result_backend":
            return conf.celery_result_backend()
        return conf.get("BROKER_TRANSPORT_OPTIONS")


def check_producer_settings(settings: Settings) -> None:
    """Raise ``NotSupported`` if a setting asks the producer for something we do not do."""
    for key, allowed in UNSUPPORTED.items():
        value = settings[key]
        if value not in allowed:
            raise NotSupported(
                f"Celery setting {key}={value!r} is not supported by compat.celery; "
                f"remove it (supported: {allowed[0]!r})."
            )
