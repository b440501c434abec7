"""``celery.states``: Celery's task states (defined once, in ``django_ray.celery.states``)."""

from django_ray.celery.states import *  # noqa: F403
from django_ray.celery.states import __all__ as __all__
