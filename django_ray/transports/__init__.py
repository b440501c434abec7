"""kombu transports that ship with django-ray."""

from __future__ import annotations

__all__ = ["register_transports"]


def register_transports() -> None:
    """Make ``django://`` a kombu transport alias."""
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES.setdefault("django", "django_ray.transports.django:Transport")
