"""Django app configuration."""

from __future__ import annotations

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

        from django_ray import checks  # noqa: F401  (registers the system checks)
        from django_ray.transports import register_transports

        register_transports()
