"""Settings for the demo and the test suite.

The embedded default needs no server: SQLite and the ``django://`` broker. Environment
variables switch parts to real services:

* ``DJANGO_RAY_DB=postgres`` - PostgreSQL on 127.0.0.1:5432 (database ``DJANGO_RAY_PG_NAME``;
  ``DJANGO_RAY_PG_PORT`` another port).
* ``DJANGO_RAY_DB_NAME`` - the SQLite file (a worker subprocess uses the test database).
* ``DJANGO_RAY_BROKER`` - broker URL, e.g. ``redis://127.0.0.1:6379/5``.
* ``DJANGO_RAY_CELERY_APP`` - dotted path of a real Celery app (Celery interop tests).
* ``DJANGO_RAY_CELERY_RESULT_BACKEND`` - ``CELERY_RESULT_BACKEND`` for Celery clients.
* ``DJANGO_RAY_TASK_OPTIONS`` - JSON for ``TASKS["default"]["OPTIONS"]["TASK_OPTIONS"]``.
* ``DJANGO_RAY_EXTRA_APPS`` - more ``INSTALLED_APPS``, comma-separated (12-factor style).
* ``PROJECT_APPS`` - the same, under a name of the project's own (not sent to Ray unless
  listed in ``DJANGO_RAY_RAY_ENV_VARS``, as a real project's variables are not).
* ``DJANGO_RAY_RAY_ENV_VARS`` - comma-separated ``DJANGO_RAY["RAY_ENV_VARS"]``.
"""

import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-ray-demo-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_ray",
    "demo",
    # A deployment's add-ons, from the environment (the tests' project-shaped apps use it).
    *[app for app in os.environ.get("DJANGO_RAY_EXTRA_APPS", "").split(",") if app],
    *[app for app in os.environ.get("PROJECT_APPS", "").split(",") if app],
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "testproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

if os.environ.get("DJANGO_RAY_DB") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("DJANGO_RAY_PG_NAME", "test"),
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": os.environ.get("DJANGO_RAY_PG_PORT", "5432"),
            "TEST": {"NAME": os.environ.get("DJANGO_RAY_PG_TEST_NAME", "test_django_ray")},
        }
    }
else:
    _sqlite = os.environ.get("DJANGO_RAY_DB_NAME", str(BASE_DIR / "demo.sqlite3"))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _sqlite,
            # Workers and producers share the file: wait for locks instead of failing.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                # WAL: readers never wait for the writer; NORMAL sync is safe under WAL.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": os.environ.get("DJANGO_RAY_TEST_DB_NAME", _sqlite + ".test")},
        }
    }

TASKS = {
    "default": {
        "BACKEND": "django_ray.backend.RayTaskBackend",
        "QUEUES": [],
    }
}
if os.environ.get("DJANGO_RAY_TASK_OPTIONS"):
    # Per-task Ray options, e.g. {"myapp.tasks.render": {"num_cpus": 2}}.
    _task_options = json.loads(os.environ["DJANGO_RAY_TASK_OPTIONS"])
    TASKS["default"]["OPTIONS"] = {"TASK_OPTIONS": _task_options}

DJANGO_RAY = {
    "BROKER_URL": os.environ.get("DJANGO_RAY_BROKER", "django://"),
    "TASK_MODULES": [m for m in os.environ.get("DJANGO_RAY_TASK_MODULES", "").split(",") if m],
    "RAY_ADDRESS": os.environ.get("DJANGO_RAY_RAY_ADDRESS") or None,
    # Every variable these settings read, so Ray task processes see the same settings;
    # DJANGO_RAY_RAY_ENV_VARS adds more (the preflight tests leave PROJECT_APPS out).
    "RAY_ENV_VARS": [
        "DJANGO_RAY_DB",
        "DJANGO_RAY_DB_NAME",
        "DJANGO_RAY_PG_NAME",
        "DJANGO_RAY_PG_PORT",
        "DJANGO_RAY_PG_TEST_NAME",
        "DJANGO_RAY_TEST_DB_NAME",
        "DJANGO_RAY_BROKER",
        "DJANGO_RAY_TASK_MODULES",
        "DJANGO_RAY_TASK_OPTIONS",
        "DJANGO_RAY_EXTRA_APPS",
        "DJANGO_RAY_RAY_ADDRESS",
        "DJANGO_RAY_CELERY_APP",
        "DJANGO_RAY_CELERY_RESULT_BACKEND",
        "DJANGO_RAY_MAX_DELIVERIES",
        "DJANGO_RAY_VISIBILITY_TIMEOUT",
        "DJANGO_RAY_RAY_ENV_VARS",
        "DJANGO_SECRET_KEY",
        *[v for v in os.environ.get("DJANGO_RAY_RAY_ENV_VARS", "").split(",") if v],
    ],
    # A real Celery app to take task names and the result backend from (Celery interop).
    "CELERY_APP": os.environ.get("DJANGO_RAY_CELERY_APP") or None,
}
if os.environ.get("DJANGO_RAY_MAX_DELIVERIES"):
    DJANGO_RAY["MAX_DELIVERIES"] = int(os.environ["DJANGO_RAY_MAX_DELIVERIES"])
if os.environ.get("DJANGO_RAY_VISIBILITY_TIMEOUT"):
    # Seconds before an unacknowledged message is delivered again (django:// and Redis).
    _visibility = float(os.environ["DJANGO_RAY_VISIBILITY_TIMEOUT"])
    DJANGO_RAY["VISIBILITY_TIMEOUT"] = _visibility
    DJANGO_RAY["BROKER_TRANSPORT_OPTIONS"] = {
        "visibility_timeout": _visibility,
        "unacked_restore_throttle": 1,
    }
if os.environ.get("DJANGO_RAY_CONFIRM_PUBLISH") == "0":
    # Publish to RabbitMQ without publisher confirms, as Celery does by default (the
    # benchmarks' producer, to compare like with like; docs/benchmarks.md).
    DJANGO_RAY["BROKER_TRANSPORT_OPTIONS"] = {
        **DJANGO_RAY.get("BROKER_TRANSPORT_OPTIONS", {}),
        "confirm_publish": False,
    }
# Where unchanged Celery clients read results (redis://...); unset means none.
CELERY_RESULT_BACKEND = os.environ.get("DJANGO_RAY_CELERY_RESULT_BACKEND")

# One console handler, on the root logger, with the worker's prefix (docs/worker.md, Logging).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"prefixed": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "prefixed"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        # Not Django's default handlers for django.*: its console handler (DEBUG only) would
        # print every django.tasks line a second time, without the prefix.
        "django": {"handlers": [], "level": "INFO"},
        # Each task's start and outcome are INFO (django_ray.worker logs the outcome too);
        # a failure is ERROR, with its traceback.
        "django.tasks": {"level": "WARNING"},
        "django_ray": {"level": "INFO"},
    },
}

STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
