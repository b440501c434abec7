"""parallel_map & co. in-process and on a real local Ray; ray_connect against a token-auth head."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from django_ray import ray_connect
from django_ray.exceptions import ModeNotAvailable
from django_ray.ray_connect import auth_env, init_local, job_client, shutdown
from django_ray.runtime.distributed import (
    get_num_workers,
    get_ray_resources,
    parallel_map,
    parallel_starmap,
    scatter_gather,
)
from tests.raycluster import ROOT, RayHead, free_port, ray_head_fixture, require_ray
from tests.waiting import wait_until

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")

ray_head = ray_head_fixture()

try:  # ship this module's functions and classes to Ray workers by value, whatever the cwd
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
except ImportError:  # pragma: no cover - the Ray tests skip
    pass


class Boom(Exception):
    """Raised on purpose by the functions under test."""


def explode_on(bad: int, marker_dir: Path | None = None) -> Any:
    """Return a function that raises Boom for ``bad``; with ``marker_dir`` others block.

    A blocked call polls (in Python, where a Ray cancellation interrupts it) for the file
    ``release``, for at most 30 s, and leaves ``started-N`` / ``interrupted-N`` / ``done-N``.
    """

    def work(item: int) -> int:
        if item == bad:
            raise Boom(f"item {item} exploded")
        if marker_dir is not None:
            (marker_dir / f"started-{item}").touch()
            deadline = time.monotonic() + 30
            try:
                while not (marker_dir / "release").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            except KeyboardInterrupt:  # how Ray delivers ray.cancel() to a running task
                (marker_dir / f"interrupted-{item}").touch()
                raise
            (marker_dir / f"done-{item}").touch()
        return item

    return work


def hide_ray_env(patch: pytest.MonkeyPatch) -> None:
    """Unset Ray's address and token variables until ``patch`` is undone."""
    for name in AUTH_VARS:
        patch.setenv(name, "x")  # records the original value, so the undo restores it
        patch.delenv(name)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Hide Ray's address and token settings; HOME (``tmp_path``) holds no token."""
    hide_ray_env(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def no_ray(clean_env: Path) -> None:
    """No Ray in this process: a connection an earlier test left open is closed."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        shutdown()


def run_python(code: str, *args: str, home: Path) -> tuple[dict[str, Any], str]:
    """Run ``code`` in a fresh interpreter with no inherited Ray address or token.

    Return the JSON it printed after ``RESULT`` and everything it wrote.
    """
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT")), proc.stdout + proc.stderr


# Without Ray: everything runs in this process, in order.


def test_in_process_map_keeps_order_and_closures(no_ray: None) -> None:
    offset = 10
    assert parallel_map(lambda x: x + offset, range(5)) == [10, 11, 12, 13, 14]
    assert parallel_starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
    assert parallel_map(str, []) == [] and scatter_gather([]) == []
    assert get_num_workers() == 1 and get_ray_resources() == {}


def test_in_process_exception_propagates_and_stops(no_ray: None) -> None:
    seen: list[int] = []

    def work(item: int) -> int:
        seen.append(item)
        return explode_on(2)(item)

    with pytest.raises(Boom, match="item 2 exploded"):
        parallel_map(work, range(5))
    assert seen == [0, 1, 2]


def test_in_process_scatter_gather_forms(no_ray: None) -> None:
    tasks: list[Any] = [lambda: "a", (pow, (2, 5)), (sorted, ([3, 1, 2],), {"reverse": True})]
    assert scatter_gather(tasks) == ["a", 32, [3, 2, 1]]
    with pytest.raises(TypeError, match=r"\(func, args\)"):
        scatter_gather([(pow, 2)])
    with pytest.raises(ValueError, match="max_in_flight"):
        parallel_map(abs, [1], max_in_flight=0)


def test_plain_process_never_starts_ray(tmp_path: Path) -> None:
    code = """if True:
        import json, sys
        from django_ray.runtime.distributed import get_num_workers, parallel_map
        result = [parallel_map(abs, [-1]), get_num_workers(), "ray" in sys.modules]
        print("RESULT", json.dumps(result))
    """
    assert run_python(code, home=tmp_path)[0] == [[1], 1, False]


def test_auth_env_sources(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert auth_env(None) == {}
    assert auth_env(" t0k ") == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t0k"}
    (clean_env / ".ray").mkdir()
    (clean_env / ".ray" / "auth_token").write_text("from-file")
    assert auth_env(None) == {"RAY_AUTH_MODE": "token"}
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(clean_env / ".ray" / "auth_token"))
    assert auth_env(None)["RAY_AUTH_TOKEN_PATH"].endswith("auth_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_env(None) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "from-env"}


@pytest.mark.ray
def test_lazy_connect_fails_clearly_for_a_dead_ray_address(
    no_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_ray()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    with pytest.raises(ModeNotAvailable, match="Cannot reach the Ray cluster"):
        parallel_map(abs, [1])


# With a real local Ray (2 CPUs).


@pytest.fixture(scope="module")
def module_ray() -> Iterator[dict[str, Any]]:
    """Hold the info of the local Ray this module starts (``local_ray``); stop it at the end."""
    require_ray()
    info: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as patch:  # Ray exports RAY_AUTH_MODE=token itself
        hide_ray_env(patch)
        yield info
        if info:
            shutdown()


@pytest.fixture
def local_ray(module_ray: dict[str, Any]) -> dict[str, Any]:
    """This module's local Ray (2 CPUs) in this process, whichever tests ran before.

    Started once for the module, and again if a test closed it; any other Ray connection
    left in the process is closed first.
    """
    ray = require_ray()
    ours = module_ray.get("address")
    if not (ray.is_initialized() and ours and ray.get_runtime_context().gcs_address == ours):
        if ray.is_initialized():
            shutdown()
        module_ray.clear()
        module_ray.update(init_local(num_cpus=2, include_dashboard=False))
    return dict(module_ray)


@pytest.mark.ray
def test_ray_map_keeps_order_with_bounded_window(local_ray: dict[str, Any]) -> None:
    factor = 3
    expected = [x * factor for x in range(500)]
    assert parallel_map(lambda x: x * factor, range(500), max_in_flight=8) == expected
    assert parallel_starmap(lambda a, b: a - b, [(5, 1), (9, 4)], num_cpus=0.5) == [4, 5]
    tasks: list[Any] = [lambda: factor, (divmod, (7, 2)), (max, ([1, 9],), {"default": 0})]
    assert scatter_gather(tasks) == [3, (3, 1), 9]
    assert parallel_map(abs, []) == []


@pytest.mark.ray
def test_ray_map_packs_short_calls_into_few_ray_tasks(local_ray: dict[str, Any]) -> None:
    import ray

    def task_id(_: int) -> str:
        return str(ray.get_runtime_context().get_task_id())

    ids = parallel_map(task_id, range(2000))
    assert len(ids) == 2000
    # The first calls go alone (their duration is unknown); then many share a Ray task.
    assert ids[0] not in ids[1:]
    assert len(set(ids)) <= 2000 // 10, len(set(ids))
    # Consecutive calls share a task, and order is kept: each task's calls are contiguous.
    runs = [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]
    assert len(runs) + 1 == len(set(ids))


@pytest.mark.ray
def test_ray_reraises_original_exception_and_cancels_the_rest(
    local_ray: dict[str, Any], tmp_path: Path
) -> None:
    from ray.exceptions import RayTaskError

    with pytest.raises(Boom, match=r"^item 0 exploded$") as caught:
        parallel_map(explode_on(0, tmp_path), range(20), max_in_flight=4)
    assert type(caught.value) is Boom
    assert isinstance(caught.value.__cause__, RayTaskError)  # carries the remote traceback

    def marks() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir())

    def all_interrupted() -> tuple[list[str], set[str]] | None:
        now = marks()
        started = {m.split("-")[1] for m in now if m.startswith("started-")}
        interrupted = {m.split("-")[1] for m in now if m.startswith("interrupted-")}
        return (now, started) if started == interrupted else None

    try:  # every call that had started gets interrupted; the others never run
        seen, started = wait_until(
            all_interrupted, "the running calls to be cancelled", details=lambda: str(marks())
        )
        assert len(started) <= 3 and not any(m.startswith("done-") for m in seen), seen
    finally:
        (tmp_path / "release").touch()


@pytest.mark.ray
def test_ray_cluster_info(local_ray: dict[str, Any]) -> None:
    assert get_num_workers() == 2
    assert get_ray_resources()["CPU"] == 2
    assert init_local() == {"address": local_ray["address"], "dashboard_url": None}


LOCAL_SCRIPT = """
import json, urllib.request
from pathlib import Path
from django_ray.ray_connect import init_local, shutdown

info = init_local(num_cpus=1)
token = (Path.home() / ".ray" / "auth_token").read_text().strip()  # Ray made it for us
request = urllib.request.Request(
    info["dashboard_url"] + "/api/version", headers={"Authorization": "Bearer " + token}
)
with urllib.request.urlopen(request, timeout=10) as response:
    info["status"] = response.status
shutdown()
print("RESULT" + json.dumps(info))
"""


@pytest.mark.ray
def test_init_local_serves_the_dashboard(tmp_path: Path) -> None:
    require_ray()
    # Concurrent test runs on this machine would race for port 8265: take turns.
    with open("/tmp/django-ray-test-dashboard.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out, _ = run_python(LOCAL_SCRIPT, home=tmp_path)
    assert out["dashboard_url"].startswith("http://127.0.0.1:") and out["status"] == 200


def test_dashboard_port_falls_back_when_8265_is_taken() -> None:
    with socket.socket() as taken:
        with contextlib.suppress(OSError):  # if someone else holds 8265, that is the test too
            taken.bind(("127.0.0.1", 8265))
            taken.listen()
        assert ray_connect._dashboard_port() != 8265


# Against a `ray start --head` cluster with token authentication, from fresh processes.

CLUSTER_SCRIPT = """
import json, sys, time
from django_ray.exceptions import ModeNotAvailable
from django_ray.ray_connect import init_cluster, job_client, shutdown
from django_ray.runtime.distributed import get_num_workers, parallel_map

gcs, client, token = sys.argv[1:4]
out = {}
for name, address, tok in [("wrong", gcs, "wrong"), ("none", gcs, None), ("client", client, "x")]:
    started = time.monotonic()
    try:
        init_cluster(address, token=tok)
        out[name] = ["connected", 0]
    except ModeNotAvailable as exc:
        out[name] = [str(exc), time.monotonic() - started]
out["info"] = init_cluster(gcs, token=token)
out["squares"] = parallel_map(lambda x: x * x, range(6), max_in_flight=2)
out["workers"] = get_num_workers()
out["jobs_url"] = job_client(gcs, token=token).get_address()
shutdown()
print("RESULT" + json.dumps(out))
"""


@pytest.mark.ray
def test_cluster_token_auth(ray_head: RayHead, tmp_path: Path) -> None:
    args = (ray_head.gcs_address, ray_head.client_address, ray_head.token)
    out, output = run_python(CLUSTER_SCRIPT, *args, home=tmp_path)
    expected = {"wrong": "rejected the token", "none": "none was found", "client": "rejected"}
    for name, needle in expected.items():
        message, seconds = out[name]
        assert needle in message and "RAY_AUTH_TOKEN" in message and seconds < 15, out
    assert ray_head.gcs_address in out["wrong"][0] and ray_head.token not in output
    assert out["info"]["address"].endswith(f":{ray_head.port}"), out
    assert out["squares"] == [0, 1, 4, 9, 16, 25] and out["workers"] == 2, out
    assert out["jobs_url"] == ray_head.dashboard_url


@pytest.mark.ray
def test_job_entrypoint_fans_out_on_its_cluster(ray_head: RayHead) -> None:
    with pytest.raises(ModeNotAvailable, match="wrong token"):
        job_client(ray_head.dashboard_url, token="wrong")
    client = job_client(ray_head.dashboard_url, token=ray_head.token)
    code = (
        "from django_ray.runtime.distributed import get_num_workers, parallel_map; "
        "print('RESULT', parallel_map(lambda x: x + 1, range(4)), get_num_workers())"
    )
    job_id = client.submit_job(
        entrypoint=f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    wait_until(
        lambda: client.get_job_status(job_id).value in {"SUCCEEDED", "FAILED", "STOPPED"},
        "the job to end",
        timeout=45,
        interval=0.5,
        details=lambda: client.get_job_logs(job_id),
    )
    logs = client.get_job_logs(job_id)
    assert "RESULT [1, 2, 3, 4] 2" in logs, logs
