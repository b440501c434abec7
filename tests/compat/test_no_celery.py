"""compat.celery never needs Celery: a process where ``import celery`` fails uses it fully."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import worker_env

SCRIPT = textwrap.dedent(
    """
    import sys

    class NoCelery:
        '''Make every import of celery (or billiard) fail, as if it were not installed.'''

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("celery", "billiard"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, NoCelery())
    try:
        import celery  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the import hook did not block celery")

    import django
    django.setup()

    from django.conf import settings
    from compat.celery import AsyncResult, chain, group, shared_task, states
    from django_ray.models import QueueMessage, TaskRecord

    @shared_task(name="nocelery.add")
    def add(x, y):
        return x + y

    result = add.apply_async((1, 2), countdown=5, priority=3)
    record = TaskRecord.objects.get(pk=result.id)
    assert (record.origin, record.task_name, record.status) == ("celery", "nocelery.add", "READY")
    assert QueueMessage.objects.filter(payload__contains=result.id).count() == 1
    assert AsyncResult(result.id).state == states.PENDING
    chain(add.s(1, 1), add.s(2)).delay()
    group(add.s(1, 1), add.s(2, 2)).delay()

    settings.CELERY_TASK_ALWAYS_EAGER = True
    assert add.delay(20, 22).get() == 42
    assert chain(add.s(1, 2), add.s(3)).delay().get() == 6

    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("celery", "billiard"))
    assert not loaded, loaded
    print("OK")
    """
)


@pytest.mark.django_db(transaction=True)
def test_compat_celery_works_where_celery_cannot_be_imported() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("OK")
