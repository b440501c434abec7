"""Celery's ``celery.utils`` helpers that task modules import (``utils.log``)."""
