"""The ``django-ray`` command line: run, watch and repair django-ray in Celery's habits.

``django-ray [--settings MODULE] [--pythonpath DIR] COMMAND``, usable as ``django-admin``
is: it sets ``DJANGO_SETTINGS_MODULE`` (or keeps the environment's), puts ``--pythonpath``
first on ``sys.path`` and calls ``django.setup()`` before any command runs. The commands
share the management commands' code (``worker``, ``status``, ``prune``) or the package's
public functions; see ``docs/cli.md`` for each command, its JSON and its exit codes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import click

__all__ = ["main"]

# Exit codes (docs/cli.md). Click itself exits 2 on a usage error.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NO_REPLY = 3  # inspect / revoke --terminate: no worker replied in time
# ``status --check``: a bitmask of what is wrong.
CHECK_FAILED = 4  # FAILED records (finished within --failed-since, default: any)
CHECK_STALE = 8  # stale RUNNING records
CHECK_BROKER = 16  # the broker cannot be reached
CHECK_STALE_WORKER = 32  # a worker's heartbeat is older than 3 x HEARTBEAT_INTERVAL


def _setup_django(settings: str | None, pythonpath: str | None) -> None:
    if pythonpath:
        sys.path.insert(0, pythonpath)
    if settings:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise click.UsageError("Pass --settings or set DJANGO_SETTINGS_MODULE.")
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--settings", metavar="MODULE", help="Django settings module (else the env's).")
@click.option("--pythonpath", metavar="DIR", help="A directory to add to sys.path first.")
def main(settings: str | None, pythonpath: str | None) -> None:
    """Run and operate django-ray workers (Django Tasks and Celery-style tasks on Ray)."""
    _setup_django(settings, pythonpath)


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _progress(items: Sequence[Any], label: str, quiet: bool) -> Any:
    """A click progress bar on stderr (stdout stays for the result, JSON included)."""
    return click.progressbar(
        items, label=label, file=sys.stderr if not quiet else io.StringIO(), show_pos=True
    )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str) -> timedelta:
    """Parse ``90s``, ``30m``, ``2h``, ``1d``, ``1h30m`` (a bare number is seconds)."""
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return timedelta(seconds=float(text))
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise click.BadParameter(f"{value!r} is not a duration like 30m, 2h, 1d or 1h30m")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


# -- worker ------------------------------------------------------------------------


@main.command(
    context_settings={
        "show_default": True, "ignore_unknown_options": True, "allow_extra_args": True,
    }
)  # fmt: skip
@click.pass_context
@click.option("--queue", "queue", multiple=True, help="Queue to consume (repeatable).")
@click.option("--queues", default="", help="Comma-separated queues to consume.")
@click.option("--sync", is_flag=True, help="Run tasks in this process, no Ray.")
@click.option("--local", is_flag=True, help="Start a local Ray and run tasks on it.")
@click.option("--cluster", metavar="ADDR", help="Run tasks on an existing Ray cluster.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Tasks in flight at once.")
@click.option("--num-cpus", type=click.IntRange(min=1), help="CPUs for the local Ray (--local).")
@click.option("--batch", is_flag=True, help="Exit once no task is left to run.")
@click.option("--max-tasks", type=click.IntRange(min=1), help="Exit after this many tasks.")
@click.option("--worker-id", help="Id kept in worker_ids (default: host-pid-random).")
@click.option("--broker", help="Broker URL (default: from settings).")
@click.option("-E", "--events", is_flag=True, help="Send Celery's task events and heartbeats.")
@click.option("--no-preflight", is_flag=True, help="Skip the cluster/job start-up check.")
@click.option("--beat", is_flag=True, help="Also send periodic tasks from this worker.")
@click.option("-v", "--verbosity", type=click.IntRange(0, 3), default=1, help="0 to 3.")
def worker(ctx: click.Context, **options: Any) -> None:
    """Consume tasks and run them (the django_ray_worker management command).

    Options not listed here are passed on to django_ray_worker as they are.
    """
    from django.core.management import CommandError, call_command

    if sum(bool(options[m]) for m in ("sync", "local", "cluster")) > 1:
        raise click.UsageError("--sync, --local and --cluster exclude each other.")
    argv = [f"--queue={q}" for q in options["queue"]]
    if options["queues"]:
        argv.append(f"--queues={options['queues']}")
    for flag in ("sync", "local", "batch", "events", "no_preflight", "beat"):
        if options[flag]:
            argv.append("--" + flag.replace("_", "-"))
    for name in ("cluster", "concurrency", "num_cpus", "max_tasks", "worker_id", "broker"):
        if options[name] is not None:
            argv.append(f"--{name.replace('_', '-')}={options[name]}")
    argv.append(f"--verbosity={options['verbosity']}")
    argv.extend(ctx.args)  # flags the management command gained since (it validates them)
    try:
        call_command("django_ray_worker", *argv)
    except CommandError as e:
        _fail(str(e))


# -- beat --------------------------------------------------------------------------


@main.command()
@click.option("--once", is_flag=True, help="Send the entries due now, then exit.")
@click.option(
    "--interval", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
    help="Seconds between two looks at the schedule at most.",
)  # fmt: skip
@click.option("-v", "--verbosity", type=click.IntRange(0, 3), default=1, help="0 to 3.")
def beat(once: bool, interval: float, verbosity: int) -> None:
    """Send periodic tasks (the django_ray_beat management command)."""
    from django.core.management import CommandError, call_command

    argv = [f"--interval={interval}", f"--verbosity={verbosity}", *(["--once"] if once else [])]
    try:
        call_command("django_ray_beat", *argv)
    except CommandError as e:
        _fail(str(e))


# -- status ------------------------------------------------------------------------


def _broker_reachable(url: str | None = None, timeout: float = 5.0) -> tuple[str, str | None]:
    """Return the broker's URL (password masked) and the error reaching it, or None."""
    from django_ray.transport import Broker

    try:
        broker = Broker(url)
    except Exception as e:  # an unknown scheme, a bad URL
        return url or "?", f"{type(e).__name__}: {e}"
    from django_ray.transport import masked_url

    shown = masked_url(broker.url)
    try:
        broker.connection.ensure_connection(max_retries=1, timeout=timeout)
        return shown, None
    except Exception as e:
        return shown, f"{type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(Exception):
            broker.close()


def _health(queues: Sequence[str], failed_since: timedelta | None) -> tuple[int, dict[str, Any]]:
    """Return ``status --check``'s exit code and what it found."""
    from django.utils import timezone

    from django_ray.models import TaskRecord, TaskStatus
    from django_ray.operations import status

    report = status(queues=queues)
    stale = sum(q.stale for q in report.queues)
    failed = TaskRecord.objects.filter(status=TaskStatus.FAILED)
    if queues:
        failed = failed.filter(queue__in=list(queues))
    if failed_since is not None:
        failed = failed.filter(finished_at__gte=timezone.now() - failed_since)
    failed_count = failed.count()
    broker, broker_error = _broker_reachable()
    code = (
        (CHECK_FAILED if failed_count else 0)
        | (CHECK_STALE if stale else 0)
        | (CHECK_BROKER if broker_error else 0)
        | (CHECK_STALE_WORKER if report.stale_workers else 0)
    )
    return code, {
        "ok": code == 0,
        "exit_code": code,
        "failed": failed_count,
        "stale": stale,
        "broker": broker,
        "broker_error": broker_error,
        "stale_workers": report.stale_workers,
    }


@main.command()
@click.option("--queue", "queues", multiple=True, help="Only this queue (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--check", is_flag=True, help="Exit non-zero when something is wrong (see docs).")
@click.option(
    "--failed-since", type=Duration(), default=None,
    help="With --check: only FAILED records finished within this duration count (e.g. 1h).",
)  # fmt: skip
def status(
    queues: tuple[str, ...], as_json: bool, check: bool, failed_since: timedelta | None
) -> None:
    """Records by status, RUNNING attempts and waiting messages, per queue."""
    from django.core.management import call_command

    out = io.StringIO()
    args = [f"--queue={q}" for q in queues] + (["--json"] if as_json else [])
    call_command("django_ray_status", *args, stdout=out)
    if not check:
        click.echo(out.getvalue().rstrip("\n"))
        return
    code, health = _health(queues, failed_since)
    if as_json:
        report = json.loads(out.getvalue())
        report["check"] = health
        _echo_json(report)
    else:
        click.echo(out.getvalue().rstrip("\n"))
        click.echo("")
        problems = []
        if health["failed"]:
            problems.append(f"{health['failed']} FAILED record(s)")
        if health["stale"]:
            problems.append(f"{health['stale']} stale RUNNING record(s)")
        if health["broker_error"]:
            problems.append(f"broker {health['broker']} unreachable ({health['broker_error']})")
        if health["stale_workers"]:
            problems.append(f"{health['stale_workers']} stale worker(s)")
        click.echo("check: " + ("; ".join(problems) if problems else "OK") + f" (exit {code})")
    sys.exit(code)


# -- inspect and remote control ---------------------------------------------------


def _mailbox_broadcast(
    command: str,
    arguments: dict[str, Any] | None = None,
    *,
    destination: Sequence[str] = (),
    timeout: float = 1.0,
) -> dict[str, Any]:
    """Broadcast a Celery control command as ``app.control`` does; return replies by node."""
    from django_ray.celery import control
    from django_ray.exceptions import ModeNotAvailable

    try:
        return control.broadcast(command, arguments, destination=destination, timeout=timeout)
    except ModeNotAvailable as e:
        _fail(str(e))
        raise  # _fail exits; this keeps the type checker informed


def _scheduled(queues: Sequence[str]) -> list[dict[str, Any]]:
    from django_ray.models import ScheduledMessage

    rows = ScheduledMessage.objects.order_by("eta")
    if queues:
        rows = rows.filter(queue__in=list(queues))
    result = []
    for row in rows:
        headers = (row.payload or {}).get("headers") if isinstance(row.payload, dict) else None
        result.append(
            {
                "id": row.task_id,
                "task": (headers or {}).get("task"),
                "queue": row.queue,
                "eta": row.eta.isoformat(),
                "retries": row.retries,
            }
        )
    return result


INSPECT_COMMANDS = {"active": "active", "registered": "registered", "stats": "stats"}


@main.command()
@click.argument("what", type=click.Choice(["active", "scheduled", "registered", "stats", "ping"]))
@click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds to wait.")
@click.option("-d", "--destination", multiple=True, help="Only this node (repeatable).")
@click.option("--queue", "queues", multiple=True, help="scheduled: only this queue.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(
    what: str, timeout: float, destination: tuple[str, ...], queues: tuple[str, ...], as_json: bool
) -> None:
    """Ask the workers (Celery's remote control): active, registered, stats, ping.

    ``scheduled`` reads the durable ETA schedule in the database instead: every parked
    message of every worker, whether or not a worker is up.
    """
    if what == "scheduled":
        rows = _scheduled(queues)
        if as_json:
            _echo_json({"scheduled": rows})
        elif not rows:
            click.echo("No parked ETA message.")
        else:
            for row in rows:
                click.echo(
                    f"{row['eta']}  {row['queue']}  {row['task'] or '?'} [{row['id']}]"
                    f" retries={row['retries']}"
                )
        return
    replies = _mailbox_broadcast(what, destination=destination, timeout=timeout)
    if as_json:
        _echo_json(replies)
    else:
        for node, reply in sorted(replies.items()):
            click.echo(f"-> {node}: OK")
            if isinstance(reply, list):
                if not reply:
                    click.echo("    - empty -")
                for item in reply:
                    text = item if isinstance(item, str) else json.dumps(item, default=str)
                    click.echo(f"    * {text}")
            else:
                shown = json.dumps(reply, indent=2, default=str)
                click.echo("\n".join("    " + line for line in shown.splitlines()))
        if not replies:
            click.echo(f"No nodes replied within {timeout:g} s.", err=True)
    if not replies:
        sys.exit(EXIT_NO_REPLY)


# -- purge ---------------------------------------------------------------------------


@main.command()
@click.argument("queues", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def purge(queues: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Delete every waiting message of QUEUE(s) from the broker.

    Parked ETA messages (the durable schedule) and task records are left as they are.
    """
    from django_ray.transport import Broker

    if not force:
        click.confirm(
            f"Delete every waiting message of {', '.join(queues)}? This cannot be undone",
            abort=True,
            err=True,
        )
    removed: dict[str, int] = {}
    broker = Broker()
    try:
        with _progress(queues, "Purging", as_json) as bar:
            for name in bar:
                channel = broker.connection.default_channel
                try:
                    removed[name] = int(broker.queue(name)(channel).purge() or 0)
                except broker.connection.channel_errors:  # no such queue (RabbitMQ)
                    removed[name] = 0
                    broker.connection.release()
                    broker = Broker()
    finally:
        broker.close()
    if as_json:
        _echo_json({"purged": removed, "total": sum(removed.values())})
    else:
        for name, count in removed.items():
            click.echo(f"Purged {count} message(s) from {name!r}.")


# -- retry ---------------------------------------------------------------------------


RETRYABLE = ("FAILED", "REVOKED")


def retry_record(record: Any) -> Any:
    """Re-enqueue a FAILED or REVOKED ``record`` as a new attempt (``operations.retry_record``)."""
    from django_ray.operations import retry_record as retry_it

    return retry_it(record)


@main.command()
@click.argument("ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Every FAILED record (with --since: recent ones).")
@click.option("--since", type=Duration(), default=None, help="With --failed: finished within.")
@click.option("--queue", "queues", multiple=True, help="With --failed: only this queue.")
@click.option("--task", "task_name", default=None, help="With --failed: only this task name.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def retry(
    ids: tuple[str, ...],
    failed: bool,
    since: timedelta | None,
    queues: tuple[str, ...],
    task_name: str | None,
    as_json: bool,
) -> None:
    """Run FAILED or REVOKED tasks again, keeping their history (errors, worker ids).

    Exit 1 when an id could not be retried (unknown, not FAILED/REVOKED, or no task name).
    """
    from django.utils import timezone

    from django_ray.models import TaskRecord, TaskStatus

    if bool(ids) == failed:
        raise click.UsageError("Give task ids, or --failed (not both).")
    if not failed and (since or queues or task_name):
        raise click.UsageError("--since, --queue and --task go with --failed.")
    skipped: dict[str, str] = {}
    if failed:
        rows = TaskRecord.objects.filter(status=TaskStatus.FAILED).exclude(task_name="")
        if since is not None:
            rows = rows.filter(finished_at__gte=timezone.now() - since)
        if queues:
            rows = rows.filter(queue__in=list(queues))
        if task_name:
            rows = rows.filter(task_name=task_name)
        records = list(rows.order_by("finished_at"))
    else:
        found = {r.pk: r for r in TaskRecord.objects.filter(pk__in=list(ids))}
        records = []
        for task_id in dict.fromkeys(ids):
            record = found.get(task_id)
            if record is None:
                skipped[task_id] = "no such task record"
            elif record.status not in RETRYABLE:
                skipped[task_id] = f"{record.status}, not FAILED or REVOKED"
            elif not record.task_name:
                skipped[task_id] = "revoked before its message arrived: its task is unknown"
            else:
                records.append(record)
    retried: list[str] = []
    with _progress(records, "Retrying", as_json or len(records) < 2) as bar:
        for record in bar:
            if retry_record(record) is not None:
                retried.append(record.pk)
            else:
                skipped[record.pk] = "changed meanwhile"
    if as_json:
        _echo_json({"retried": retried, "skipped": skipped})
    else:
        for task_id in retried:
            click.echo(f"Retrying {task_id}.")
        for task_id, why in skipped.items():
            click.echo(f"Not retried {task_id}: {why}.", err=True)
        if not retried and not skipped:
            click.echo("Nothing to retry.")
    if skipped:
        sys.exit(EXIT_ERROR)


# -- revoke --------------------------------------------------------------------------


@main.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop the attempt a worker runs now.")
@click.option("--timeout", type=float, default=1.0, show_default=True, help="With --terminate.")
@click.option("-d", "--destination", multiple=True, help="With --terminate: only this node.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def revoke(
    ids: tuple[str, ...],
    terminate: bool,
    timeout: float,
    destination: tuple[str, ...],
    as_json: bool,
) -> None:
    """Keep tasks from starting (REVOKED); --terminate stops a running one too."""
    from django_ray.celery import results
    from django_ray.models import TaskRecord

    marked = results.revoke(ids)
    states = dict(TaskRecord.objects.filter(pk__in=list(ids)).values_list("pk", "status"))
    replies: dict[str, Any] = {}
    if terminate:
        replies = _mailbox_broadcast(
            "revoke",
            {"task_id": list(ids), "terminate": True, "signal": "SIGTERM"},
            destination=destination,
            timeout=timeout,
        )
    if as_json:
        payload: dict[str, Any] = {"revoked": marked, "status": states}
        if terminate:
            payload["replies"] = replies
        _echo_json(payload)
    else:
        for task_id in ids:
            if task_id in marked:
                click.echo(f"Revoked {task_id}.")
            else:
                click.echo(f"{task_id} is {states.get(task_id, '?')}: not revoked before start.")
        for node, reply in sorted(replies.items()):
            click.echo(f"-> {node}: {reply}")
    if terminate and not replies:
        click.echo(f"No nodes replied within {timeout:g} s.", err=True)
        sys.exit(EXIT_NO_REPLY)


# -- prune ---------------------------------------------------------------------------


@main.command()
@click.option("--min-age-days", type=click.IntRange(min=0), default=14, show_default=True)
@click.option("--failed-min-age-days", type=click.IntRange(min=0), default=None)
@click.option("--queue", "queues", multiple=True, help="Only this queue (repeatable).")
@click.option("--task", "task_name", default=None, help="Only records of this task name.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def prune(
    min_age_days: int,
    failed_min_age_days: int | None,
    queues: tuple[str, ...],
    task_name: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete finished task records older than an age (the django_ray_prune command)."""
    from django_ray import operations
    from django_ray.management.commands.django_ray_prune import _report
    from django_ray.models import TaskRecord

    min_age = timedelta(days=min_age_days)
    failed_min_age = None if failed_min_age_days is None else timedelta(days=failed_min_age_days)
    if warning := operations.age_warning(min_age, failed_min_age):
        click.echo(warning, err=True)
    # One step per queue: a progress bar over a large table, each queue pruned in batches.
    names = list(queues) or sorted(
        set(TaskRecord.objects.finished().values_list("queue", flat=True).distinct())
    )
    records: dict[str, int] = {}
    scheduled = 0
    with _progress(names, "Pruning", as_json or len(names) < 2) as bar:
        for name in bar:
            part = operations.prune(
                min_age=min_age, failed_min_age=failed_min_age, queues=[name],
                task_name=task_name, dry_run=dry_run,
            )  # fmt: skip
            for key, count in part.records.items():
                records[key] = records.get(key, 0) + count
            scheduled += part.scheduled
    if names:
        total = operations.PruneResult(records=records, scheduled=scheduled, dry_run=dry_run)
    else:  # nothing finished: still report every status at zero
        total = operations.prune(
            min_age=min_age, failed_min_age=failed_min_age, task_name=task_name, dry_run=dry_run
        )
    if as_json:
        _echo_json(
            {"dry_run": dry_run, "records": total.records, "scheduled": total.scheduled,
             "total": sum(total.records.values())}
        )  # fmt: skip
    else:
        click.echo(_report(total))


# -- bench ---------------------------------------------------------------------------


@main.command()
@click.option("-n", "--tasks", "count", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--queue", default=None, help="Queue to use (default: a fresh bench-<hex> one).")
@click.option(
    "--task", "task_name", default="celery.starmap", show_default=True,
    help="Task to run (default: the built-in starmap over nothing, a no-op).",
)  # fmt: skip
@click.option("--args", "args_json", default=None, help="JSON list of arguments for --task.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(
    count: int, queue: str | None, task_name: str, args_json: str | None, as_json: bool
) -> None:
    """Publish N tasks, drain them with an in-process --sync --batch worker, print rates.

    A quick check of this machine's broker and database; benchmarks/run.py in the
    repository compares brokers and modes.
    """
    import uuid

    from django.core.management import call_command
    from django.db.models import Count

    from django_ray.message import TaskMessage, new_task_id
    from django_ray.models import TaskRecord, TaskStatus
    from django_ray.transport import Broker

    if args_json is not None:
        try:
            args = json.loads(args_json)
        except ValueError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--args") from None
        if not isinstance(args, list):
            raise click.BadParameter("must be a JSON list", param_hint="--args")
    else:
        args = [{"task": "celery.map"}, []] if task_name == "celery.starmap" else []
    queue = queue or f"bench-{uuid.uuid4().hex[:8]}"
    ids = [new_task_id() for _ in range(count)]
    broker = Broker()
    started = time.perf_counter()
    try:
        with _progress(ids, "Publishing", as_json) as bar:
            for task_id in bar:
                broker.publish(TaskMessage(id=task_id, task=task_name, args=tuple(args),
                                           queue=queue))  # fmt: skip
    finally:
        broker.close()
    published = time.perf_counter() - started
    started = time.perf_counter()
    out = io.StringIO()
    call_command("django_ray_worker", "--sync", "--batch", f"--queue={queue}", "--verbosity=0",
                 stdout=out)  # fmt: skip
    drained = time.perf_counter() - started
    done = dict(
        TaskRecord.objects.filter(pk__in=ids)
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    result = {
        "tasks": count,
        "queue": queue,
        "task": task_name,
        "publish_seconds": round(published, 3),
        "publish_per_second": round(count / published, 1) if published else None,
        "drain_seconds": round(drained, 3),
        "drain_per_second": round(count / drained, 1) if drained else None,
        "statuses": done,
    }
    if as_json:
        _echo_json(result)
    else:
        click.echo(
            f"Published {count} in {published:.2f} s ({result['publish_per_second']}/s); "
            f"ran them with one --sync worker in {drained:.2f} s ({result['drain_per_second']}/s)."
        )
        click.echo("Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(done.items())))
    if done.get(TaskStatus.SUCCESSFUL, 0) != count:
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    main()
