"""Real Celery clients (and a real Celery worker) against ``django_ray_worker``."""
