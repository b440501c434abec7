"""Drop-in replacements for other task libraries' public APIs.

``compat.celery`` mirrors Celery's public names so that a Celery codebase moves onto
django-ray by changing ``from celery import ...`` to ``from compat.celery import ...``.
"""
