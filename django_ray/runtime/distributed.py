"""Fan work out from inside a task: Ray tasks when Ray is up, a plain loop otherwise.

Under Ray (the worker's local and cluster modes, Ray workers, and Ray job entrypoints, which
connect lazily through ``RAY_ADDRESS``) calls run as Ray tasks. The first calls go one to a
Ray task; once their duration is known, short calls are packed, several consecutive calls
of the same function to one Ray task, about ``CHUNK_TARGET_S`` of work each (Ray's cost per
task is a millisecond or two), while keeping at least two Ray tasks per CPU for the rest of
the work. Functions travel with cloudpickle, so closures and lambdas work. Results keep
input order, at most ``max_in_flight`` Ray tasks (so calls) run at once, and the first
failure cancels the remaining work and
re-raises the original exception: calls not sent yet are dropped, calls not started skip their
work, and running calls get ``KeyboardInterrupt`` (at their next Python bytecode: a call blocked
in C, e.g. in ``time.sleep``, stops when that returns). Without Ray the same calls run in this
process, in order.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from functools import cache
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.remote_function import RemoteFunction

__all__ = [
    "get_num_workers",
    "get_ray_resources",
    "parallel_map",
    "parallel_starmap",
    "scatter_gather",
]

Call = tuple[Callable[..., Any], Sequence[Any], dict[str, Any]]

MIN_IN_FLIGHT = 16  # default window: max(MIN_IN_FLIGHT, 4 x cluster CPUs)
CHUNK_TARGET_S = 0.05  # work per Ray task once the calls' duration is known
CHUNK_MAX = 256  # calls in one Ray task at most
FLAG_NAMESPACE = "django_ray"  # Ray internal KV namespace of the "batch cancelled" flags
FLAG_TTL_S = 300.0  # a failed batch's flag outlives any call that could still start
_connect_lock = threading.Lock()


def parallel_map[T, R](
    func: Callable[[T], R],
    items: Iterable[T],
    *,
    max_in_flight: int | None = None,
    **ray_options: Any,
) -> list[R]:
    """Return ``[func(item) for item in items]``, computed as parallel Ray tasks when possible."""
    return _run([(func, (item,), {}) for item in items], max_in_flight, ray_options)


def parallel_starmap[R](
    func: Callable[..., R],
    args_list: Iterable[Sequence[Any]],
    *,
    max_in_flight: int | None = None,
    **ray_options: Any,
) -> list[R]:
    """Return ``[func(*args) for args in args_list]``, computed in parallel when possible."""
    return _run([(func, tuple(args), {}) for args in args_list], max_in_flight, ray_options)


def scatter_gather(
    tasks: Iterable[Callable[[], Any] | tuple[Any, ...]],
    *,
    max_in_flight: int | None = None,
    **ray_options: Any,
) -> list[Any]:
    """Run callables or ``(func, args)`` / ``(func, args, kwargs)`` tuples; return their results."""
    return _run([_as_call(task) for task in tasks], max_in_flight, ray_options)


def get_num_workers() -> int:
    """Return the number of CPUs of the Ray cluster (at least 1), or 1 without Ray."""
    if not _ray_ready():
        return 1
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 0)))


def get_ray_resources() -> dict[str, float]:
    """Return ``ray.cluster_resources()``, or ``{}`` without Ray."""
    if not _ray_ready():
        return {}
    import ray

    return dict(ray.cluster_resources())


def _as_call(task: Callable[[], Any] | tuple[Any, ...]) -> Call:
    """Normalise one ``scatter_gather`` entry to ``(func, args, kwargs)``."""
    if callable(task):
        return task, (), {}
    if isinstance(task, tuple) and len(task) in (2, 3) and callable(task[0]):
        args, kwargs = task[1], task[2] if len(task) == 3 else {}
        if isinstance(args, list | tuple) and isinstance(kwargs, dict):
            return task[0], tuple(args), kwargs
    raise TypeError(
        f"scatter_gather() got {task!r}; pass a callable or a (func, args) or "
        "(func, args, kwargs) tuple with args a tuple and kwargs a dict."
    )


def _ray_ready() -> bool:
    """Return True if Ray is initialised here, connecting first inside a Ray job entrypoint."""
    loaded = sys.modules.get("ray")  # never imported means never initialised: stay cheap
    if loaded is not None and loaded.is_initialized():
        return True
    address = os.environ.get("RAY_ADDRESS", "")
    if not address or address.startswith(("http://", "https://")):  # no cluster, or Jobs API
        return False
    import ray

    from django_ray.ray_connect import init_cluster

    with _connect_lock:
        if not ray.is_initialized():
            init_cluster(address)  # a Ray job entrypoint: RAY_ADDRESS names its cluster
    return True


def _run(calls: list[Call], max_in_flight: int | None, options: dict[str, Any]) -> list[Any]:
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}.")
    if not calls:
        return []
    if not _ray_ready():
        return [func(*args, **kwargs) for func, args, kwargs in calls]
    workers = get_num_workers()
    window = max_in_flight or max(MIN_IN_FLIGHT, 4 * workers)
    remote = _remote_invoke().options(**{"max_retries": 0, **options})
    return _run_on_ray(calls, window, remote, workers)


def _run_on_ray(
    calls: list[Call], window: int, remote: RemoteFunction, workers: int = 1
) -> list[Any]:
    """Submit ``calls`` with at most ``window`` Ray tasks in flight, packed once their
    duration is known (see the module docstring); keep order; stop at the first error."""
    import ray

    results: list[Any] = [None] * len(calls)
    pending: dict[ObjectRef[Any], tuple[int, int]] = {}  # Ray task: (first call, calls)
    func_refs: dict[int, ObjectRef[Any]] = {}  # each distinct function is uploaded once
    submitted, flag = 0, f"cancelled:{uuid.uuid4().hex}"
    timed_calls, timed_seconds = 0, 0.0
    try:
        while submitted < len(calls) or pending:
            while submitted < len(calls) and len(pending) < window:
                per_call = timed_seconds / timed_calls if timed_calls else None
                size = _chunk_size(per_call, len(calls) - submitted, workers)
                func = calls[submitted][0]
                members = []
                for func_i, args, kwargs in calls[submitted : submitted + size]:
                    if func_i is not func:
                        break  # a chunk runs one function (scatter_gather mixes them)
                    members.append((args, kwargs))
                if id(func) not in func_refs:
                    func_refs[id(func)] = ray.put(func)
                ref = remote.remote(flag, func_refs[id(func)], members)
                pending[ref] = (submitted, len(members))
                submitted += len(members)
            ready, rest = ray.wait(list(pending), num_returns=1)
            if rest:  # collect everything else that is already done, without waiting
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                first, count = pending.pop(ref)
                values, seconds = _get(ref)
                results[first : first + count] = values
                timed_calls, timed_seconds = timed_calls + count, timed_seconds + seconds
    except BaseException:
        _cancel(flag, pending)  # un-submitted calls are simply never sent
        raise
    return results


def _chunk_size(per_call: float | None, remaining: int, workers: int) -> int:
    """How many calls the next Ray task runs: one while their duration is unknown; else
    about ``CHUNK_TARGET_S`` of them, leaving at least two Ray tasks per CPU to share."""
    if per_call is None:
        return 1
    by_time = int(CHUNK_TARGET_S / max(per_call, 1e-6))
    by_share = -(-remaining // (2 * max(1, workers)))  # ceil
    return max(1, min(by_time, by_share, CHUNK_MAX))


def _get(ref: ObjectRef[Any]) -> Any:
    """Return the value of ``ref``, re-raising a failed task's original exception."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from exc  # the chained RayTaskError carries the remote traceback
        raise


def _cancel(flag: str, pending: dict[ObjectRef[Any], Any]) -> None:
    """Raise ``flag`` so calls not started yet skip their work, then cancel the rest.

    The flag closes a race in Ray: a cancellation that reaches a worker just before the task
    starts is dropped, and the task then runs in full.
    """
    import ray
    from ray.experimental import internal_kv

    if not pending:
        return
    with suppress(Exception):
        internal_kv._internal_kv_put(flag, b"1", namespace=FLAG_NAMESPACE)
        timer = threading.Timer(FLAG_TTL_S, _drop_flag, args=(flag,))
        timer.daemon = True
        timer.start()
    for ref in pending:
        with suppress(Exception):  # finished or gone meanwhile: nothing left to stop
            ray.cancel(ref, recursive=True)


def _drop_flag(flag: str) -> None:
    import ray
    from ray.experimental import internal_kv

    if ray.is_initialized():
        with suppress(Exception):
            internal_kv._internal_kv_del(flag, namespace=FLAG_NAMESPACE)


@cache
def _remote_invoke() -> RemoteFunction:
    """Build the Ray task that runs every call; nested, so workers need not import django_ray."""
    import ray

    def invoke(
        flag: str, func: Callable[..., Any], calls: list[tuple[Sequence[Any], dict[str, Any]]]
    ) -> tuple[list[Any], float]:
        import signal
        import threading
        import time

        from ray.exceptions import TaskCancelledError
        from ray.experimental import internal_kv

        if internal_kv._internal_kv_exists(flag, namespace=FLAG_NAMESPACE):
            raise TaskCancelledError()  # the batch already failed: do not start this call
        # ray.cancel() interrupts a running call through Python's SIGINT handler, which a
        # worker lacks when Ray was started with SIGINT ignored (nohup, `cmd &` in a script).
        on_main_thread = threading.current_thread() is threading.main_thread()
        if on_main_thread and signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(signal.SIGINT, signal.default_int_handler)
        started = time.perf_counter()
        values = [func(*args, **kwargs) for args, kwargs in calls]
        return values, time.perf_counter() - started

    invoke.__qualname__ = invoke.__name__ = "django_ray_call"  # how it shows in the dashboard
    return cast("RemoteFunction", ray.remote(max_retries=0)(invoke))
