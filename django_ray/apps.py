"""Django app configuration."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class DjangoRayConfig(AppConfig):
    name = "django_ray"
    verbose_name = "django-ray tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Django registers its task-backend check (which runs RayTaskBackend.check():
        # django_ray.E001-E003, W004) only when django.tasks is imported. Nothing else
        # imports it while a plain project starts, so `manage.py check` would skip them.
        import django.tasks  # noqa: F401
        from django.db.backends.signals import connection_created

        from django_ray import checks  # noqa: F401  (registers the system checks)
        from django_ray.transports import register_transports

        register_transports()
        connection_created.connect(tune_sqlite, dispatch_uid="django_ray.tune_sqlite")


def tune_sqlite(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Open SQLite files in WAL mode for many processes at once (``DJANGO_RAY["SQLITE_WAL"]``)."""
    from django_ray import conf

    if connection.vendor != "sqlite" or not conf.get("SQLITE_WAL"):
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")  # an in-memory database stays in memory
        cursor.execute("PRAGMA synchronous=NORMAL")
        if "timeout" not in connection.settings_dict.get("OPTIONS", {}):
            cursor.execute("PRAGMA busy_timeout=30000")
