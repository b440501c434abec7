"""A two-node cluster on this machine: tasks land on the second node and run there set up.

The session's head plus a node joined with ``ray start --address`` (``RayNode``), both
started apart from the project. The task asks for a resource only the second node offers
(per-task Ray options, ``TASK_OPTIONS``), so it must run there: its process, which starts
empty on a node that never saw the project, sets the project up (Django, the registry)
from the worker's ``runtime_env``, and its ``parallel_map`` fans out across the cluster.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from django_ray.models import TaskRecord
from tests.conftest import run_worker
from tests.raycluster import RayHeadError, RayNode, ray_unavailable

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.redis]

PROJECT = Path(__file__).resolve().parent.parent / "realproject"


@pytest.fixture(scope="module")
def second_node(ray_head: Any) -> Iterator[RayNode]:
    node = RayNode(
        ray_head, num_cpus=1, resources={"second_node": 4}, extra_env={"RAY_NODE_LABEL": "second"}
    )
    # A raylet that times out joining on a loaded machine (the other test process runs Ray
    # too) gets one more try, as RayHead.start gives the head.
    for attempt in (1, 2):
        try:
            node.start()
            break
        except RayHeadError as exc:
            node.stop()
            if attempt == 2:
                ray_unavailable(f"A second Ray node cannot join here: {exc}")
    try:
        yield node
    finally:
        node.stop()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_tasks_land_on_the_second_node_and_run_there_set_up(
    broker_url: str, ray_head: Any, second_node: RayNode
) -> None:
    sys.path.insert(0, str(PROJECT))
    try:
        from shop import tasks
    finally:
        sys.path.remove(str(PROJECT))
    queue = f"two-nodes-{uuid.uuid4().hex[:8]}"
    ids = [tasks.where.using(queue_name=queue).enqueue(4).id for _ in range(3)]
    options = {"shop.tasks.where": {"resources": {"second_node": 1}}}

    proc = run_worker(
        f"--queue={queue}", "--batch", f"--cluster={ray_head.gcs_address}", timeout=240,
        **ray_head.env(), DJANGO_RAY_TASK_MODULES="", DJANGO_RAY_EXTRA_APPS="shop",
        DJANGO_RAY_TASK_OPTIONS=json.dumps(options),
        PYTHONPATH=os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")]),
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr[-3000:]
    for record in TaskRecord.objects.filter(pk__in=ids):
        assert record.status == "SUCCESSFUL", record.errors
        assert record.return_value["task"] == "second"
        assert len(record.return_value["fan_out"]) == 4
        assert set(record.return_value["fan_out"]) <= {"head", "second"}
