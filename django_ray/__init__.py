"""django-ray: run Django Tasks and Celery-style tasks on Ray."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
