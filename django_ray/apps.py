"""Django app configuration."""

from __future__ import annotations

from django.apps import AppConfig


class DjangoRayConfig(AppConfig):
    name = "django_ray"
    verbose_name = "django-ray tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_ray import checks  # noqa: F401  (registers the system checks)
        from django_ray.transports import register_transports

        register_transports()
