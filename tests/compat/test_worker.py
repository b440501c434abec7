"""End to end: compat tasks sent to the broker, run by ``django_ray_worker --sync --batch``."""

from __future__ import annotations

import subprocess

import pytest

from compat.celery import AsyncResult, chain, group, states
from tests.compat import compat_tasks
from tests.compat.compat_tasks import TransientError
from tests.conftest import run_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MODULES = "tests.tasks,tests.compat.compat_tasks"


def work(*queues: str) -> subprocess.CompletedProcess[str]:
    """Run the worker on ``queues`` (default: Celery's ``celery``) until nothing is left."""
    args = [f"--queue={q}" for q in queues or ("celery",)]
    done = run_worker("--sync", "--batch", *args, DJANGO_RAY_TASK_MODULES=MODULES)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("broker_url", ["django", "redis"], indirect=True)
def test_delay_is_run_by_the_worker(broker_url: str) -> None:
    result = compat_tasks.add.delay(2, 3)
    work()
    assert result.get(timeout=10) == 5
    assert AsyncResult(result.id).state == states.SUCCESS


def test_request_inside_the_worker(broker_url: str) -> None:
    result = compat_tasks.whoami.delay()
    work()
    info = result.get(timeout=10)
    assert (info["id"], info["called_directly"], info["is_eager"]) == (result.id, False, False)


def test_retries_publish_the_same_id_again(broker_url: str) -> None:
    result = compat_tasks.retry_until.delay(2)
    work()
    assert result.get(timeout=10) == 2
    assert result.retries == 2


def test_failure_reaches_get(broker_url: str) -> None:
    result = compat_tasks.fail.delay("in the worker")
    work()
    with pytest.raises(TransientError, match="in the worker"):
        result.get(timeout=10)


def test_chain_and_group_through_the_worker(broker_url: str) -> None:
    chained = chain(compat_tasks.add.s(1, 2), compat_tasks.mul.s(10)).delay()
    grouped = group(compat_tasks.mul.s(i, 2) for i in range(3)).delay()
    work()
    assert chained.get(timeout=10) == 30 and chained.parent.get(timeout=10) == 3
    assert grouped.get(timeout=10) == [0, 2, 4]


def test_queue_option_routes_to_another_queue(broker_url: str) -> None:
    result = compat_tasks.routed.delay()
    work("celery")
    assert result.state == states.PENDING  # declared queue="other-queue"
    work("other-queue")
    assert result.get(timeout=10) == "routed"
