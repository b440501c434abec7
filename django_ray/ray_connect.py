"""Connect this process to Ray: a local instance, an existing cluster, or the Jobs API.

Ray 2.60 uses token authentication by default. A client of an explicit address needs
``RAY_AUTH_MODE=token`` and the token in ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``, read from os.environ (so :func:`init_cluster` exports them there); the
Jobs HTTP API takes ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django_ray.exceptions import ModeNotAvailable

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = ["auth_env", "init_cluster", "init_local", "job_client", "ping", "shutdown"]

logger = logging.getLogger(__name__)

MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")
DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8265
PROBE_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 5.0  # long enough for a busy GCS: a false alarm reruns in-flight tasks
TOKEN_HELP = "pass the cluster's token (or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)"


def auth_env(token: str | None = None) -> dict[str, str]:
    """Return the environment variables that authenticate to a token-auth Ray cluster."""
    if token and token.strip():
        return {MODE_VAR: "token", TOKEN_VAR: token.strip()}
    if os.environ.get(MODE_VAR, "").lower() == "disabled":
        return {}
    if os.environ.get(TOKEN_VAR, "").strip():
        return {MODE_VAR: "token", TOKEN_VAR: os.environ[TOKEN_VAR].strip()}
    path = os.environ.get(TOKEN_PATH_VAR, "")
    if path and Path(path).expanduser().is_file():
        return {MODE_VAR: "token", TOKEN_PATH_VAR: path}
    if DEFAULT_TOKEN_PATH.expanduser().is_file():
        return {MODE_VAR: "token"}
    return {}


def init_local(
    num_cpus: int | None = None,
    *,
    runtime_env: dict[str, Any] | None = None,
    include_dashboard: bool | None = None,
) -> dict[str, Any]:
    """Start a local Ray instance (dashboard on 127.0.0.1:8265) unless Ray is already up."""
    import ray

    if ray.is_initialized():
        return _current_info()
    if include_dashboard is None:  # the dashboard needs ray[default] (aiohttp)
        include_dashboard = importlib.util.find_spec("aiohttp") is not None
    kwargs: dict[str, Any] = {"include_dashboard": include_dashboard}
    # Two local instances starting at once on one host (two --local workers) would both
    # find port 8265 free, and the second dashboard would fail to bind: start one at a time.
    with _host_lock("local-ray-start"), _keep_sigterm_handler():
        if include_dashboard:
            kwargs.update(dashboard_host=DASHBOARD_HOST, dashboard_port=_dashboard_port())
        # address="local" starts a new instance even with RAY_ADDRESS or a `ray start` around.
        context = ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env, **kwargs)
    return _info(getattr(context, "address_info", {}).get("gcs_address"), context.dashboard_url)


def init_cluster(
    address: str, *, token: str | None = None, runtime_env: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Connect to the Ray cluster at ``ray://host:port`` or GCS ``host:port``."""
    import ray

    if ray.is_initialized():
        logger.warning("Ray is already initialised; not connecting again to %s.", address)
        return _current_info()
    env = auth_env(token)
    with _exported(env, keep=True):
        _probe(address, bool(env))  # fails in seconds where ray.init would retry for 20-40 s
        try:
            with _exported({"RAY_ADDRESS": None}, keep=False), _keep_sigterm_handler():
                context = ray.init(address=address, runtime_env=runtime_env)  # RAY_ADDRESS unset
        except Exception as exc:
            raise ModeNotAvailable(
                f"Could not connect to the Ray cluster at {address} ({type(exc).__name__}); "
                "check that the cluster is running, reachable, and uses this Ray version."
            ) from exc
    address_info = getattr(context, "address_info", None) or {}
    return _info(address_info.get("gcs_address", address), context.dashboard_url)


def job_client(address: str, *, token: str | None = None) -> JobSubmissionClient:
    """Return a Jobs API client for ``address`` that sends the cluster token."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = _jobs_url(address, token)
    resolved = _read_token(auth_env(token))
    headers = {"Authorization": f"Bearer {resolved}"} if resolved else {}
    try:
        with _exported(dict.fromkeys(("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")), keep=False):
            return JobSubmissionClient(url, headers=headers)
    except AuthenticationError as exc:
        raise ModeNotAvailable(
            f"The Ray Jobs API at {url} refused the request "
            f"({'wrong token' if resolved else 'no token'}); {TOKEN_HELP}."
        ) from exc
    except (ConnectionError, OSError) as exc:
        raise ModeNotAvailable(
            f"Cannot reach the Ray Jobs API at {url}; "
            "start the head with ray[default] or pass its dashboard URL (http://HOST:8265)."
        ) from exc


def shutdown() -> None:
    """Disconnect from Ray (stopping the local instance if this process started it).

    Safe when Ray is half-connected or already gone. The process's SIGTERM handler is armed
    again afterwards: Ray's shutdown leaves the signal at its default action, which would
    kill a worker instead of letting it drain.
    """
    import ray

    with _keep_sigterm_handler():
        ray.shutdown()


def ping(timeout: float = PING_TIMEOUT_S) -> None:
    """Raise ``ConnectionError`` unless this process's Ray answers within ``timeout`` seconds.

    A driver asks its GCS for one key (Ray's own calls may hang or fail only much later
    when the head is gone); a Ray Client only checks that it is still connected, as its
    calls raise ``ConnectionError`` once the server is gone.
    """
    import ray
    from ray.util.client import ray as client

    if client.is_connected():
        return
    if not ray.is_initialized():
        raise ConnectionError("Ray is not initialised in this process.")
    from ray._private.worker import global_worker

    try:
        gcs = global_worker.gcs_client  # type: ignore[attr-defined]
        gcs.internal_kv_get(b"ping", b"django_ray", timeout=timeout)
    except Exception as exc:
        raise ConnectionError(
            f"the Ray GCS did not answer within {timeout:.0f} s ({type(exc).__name__})"
        ) from exc


def _read_token(env: dict[str, str]) -> str | None:
    """Return the token that ``env`` (from :func:`auth_env`) points at, if any."""
    if TOKEN_VAR in env or MODE_VAR not in env:
        return env.get(TOKEN_VAR)
    path = Path(env.get(TOKEN_PATH_VAR, DEFAULT_TOKEN_PATH)).expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


@contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Keep this process's SIGTERM handler across ``ray.init()`` and ``ray.shutdown()``.

    ``ray.init()`` replaces it with ``sys.exit``; ``ray.shutdown()`` resets the signal to
    its default action behind Python's back. The worker's handler (drain: finish running
    tasks, then exit) must survive the first connection and every reconnection.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


@contextmanager
def _exported(env: Mapping[str, str | None], *, keep: bool) -> Iterator[None]:
    """Set (None: unset) env vars Ray reads; undo them on error, or always unless ``keep``."""
    previous: dict[str, str | None] = {key: os.environ.get(key) for key in env}
    _set_env(env)
    try:
        yield
    except BaseException:
        _set_env(previous)
        raise
    if not keep:
        _set_env(previous)


def _set_env(values: Mapping[str, str | None]) -> None:
    """Set or unset environment variables and make Ray reload its cached auth settings."""
    if all(os.environ.get(key) == value for key, value in values.items()):
        return
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    if not ray.is_initialized():  # a connected process keeps the config it connected with
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _parse_address(address: str) -> tuple[bool, str, int]:
    """Split ``address`` into (is Ray Client, host, port) or raise a clear error."""
    client = address.startswith("ray://")
    rest = address.removeprefix("ray://").rstrip("/")
    host, _, port = rest.rpartition(":")
    if "://" in rest or not host or not port.isdigit():
        raise ModeNotAvailable(
            f"Ray cluster address {address!r} is not valid; "
            "use the GCS address host:port (e.g. 10.0.0.5:6379) or ray://host:10001."
        )
    return client, host.strip("[]"), int(port)


def _probe(address: str, had_token: bool) -> Any:
    """Reach the GCS or Ray Client server once, within ~15 s, or raise a clear error."""
    from ray.exceptions import AuthenticationError

    client, host, port = _parse_address(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ModeNotAvailable(
            f"Cannot reach the Ray cluster at {address} ({exc.strerror or exc}); "
            "start the cluster or fix the address (--cluster / RAY_ADDRESS)."
        ) from exc
    outcome: dict[str, Any] = {}
    call = _ping_client_server if client else _open_gcs_client
    thread = threading.Thread(target=_capture, args=(call, f"{host}:{port}", outcome), daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    error = outcome.get("error")
    if isinstance(error, AuthenticationError):
        problem = "rejected the token" if had_token else "requires a token and none was found"
        raise ModeNotAvailable(f"The Ray cluster at {address} {problem}; {TOKEN_HELP}.")
    if thread.is_alive() or error is not None:
        port_hint = "the Ray Client port (10001)" if client else "the GCS port (ray start --port)"
        raise ModeNotAvailable(
            f"The Ray cluster at {address} did not answer within {PROBE_TIMEOUT_S:.0f} s "
            f"({type(error).__name__ if error else 'timeout'}); check that the port is {port_hint}."
        ) from error
    return outcome["value"]


def _capture(call: Callable[[str], Any], address: str, outcome: dict[str, Any]) -> None:
    try:
        outcome["value"] = call(address)
    except Exception as exc:
        outcome["error"] = exc


def _open_gcs_client(address: str) -> Any:
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    return GcsClient(address=address)  # raises AuthenticationError at once on a bad token


def _ping_client_server(address: str) -> None:
    import grpc
    from ray._private.grpc_utils import init_grpc_channel  # adds Ray's auth metadata
    from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc
    from ray.exceptions import AuthenticationError

    ping = ray_client_pb2.ClusterInfoType.PING  # type: ignore[attr-defined]
    request = ray_client_pb2.ClusterInfoRequest(type=ping)  # type: ignore[attr-defined]
    channel = init_grpc_channel(address, asynchronous=False)
    try:
        ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(request, timeout=PROBE_TIMEOUT_S)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise AuthenticationError(str(exc.details())) from None
        raise
    finally:
        channel.close()


def _jobs_url(address: str, token: str | None) -> str:
    """Return the Jobs API (dashboard) URL for an http(s), ray:// or GCS address."""
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if address.startswith("ray://"):  # Ray's own convention: dashboard on the default port
        return f"http://{_parse_address(address)[1]}:{DASHBOARD_PORT}"
    from ray._private import ray_constants

    env = auth_env(token)
    with _exported(env, keep=False):
        gcs = _probe(address, bool(env))
        value = gcs.internal_kv_get(
            ray_constants.DASHBOARD_ADDRESS.encode(), ray_constants.KV_NAMESPACE_DASHBOARD
        )
    if not value:
        raise ModeNotAvailable(
            f"The Ray cluster at {address} has no dashboard; "
            "start the head with ray[default] installed to use the Jobs API."
        )
    return f"http://{value.decode()}"


@contextmanager
def _host_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock shared by every process of this host (a file lock)."""
    import fcntl
    import tempfile

    path = Path(tempfile.gettempdir()) / f"django-ray-{name}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _dashboard_port() -> int:
    """Return 8265, or a free port (with a warning) when 8265 is taken."""
    with socket.socket() as probe:
        try:
            probe.bind((DASHBOARD_HOST, DASHBOARD_PORT))
            return DASHBOARD_PORT
        except OSError:
            probe.bind((DASHBOARD_HOST, 0))
            port = int(probe.getsockname()[1])
    logger.warning("Port %s is busy; the Ray dashboard uses port %s.", DASHBOARD_PORT, port)
    return port


def _info(address: str | None, dashboard_url: str | None) -> dict[str, Any]:
    if dashboard_url and "://" not in dashboard_url:
        dashboard_url = f"http://{dashboard_url}"
    return {"address": address, "dashboard_url": dashboard_url or None}


def _current_info() -> dict[str, Any]:
    """Describe the Ray that is already initialised (possibly by someone else)."""
    import ray
    from ray._private.worker import get_dashboard_url

    try:
        return _info(ray.get_runtime_context().gcs_address, get_dashboard_url())
    except Exception:  # Ray Client contexts expose neither
        return _info(None, None)
