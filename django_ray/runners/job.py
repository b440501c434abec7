"""Ray Job mode (the default): each task attempt is one Ray job.

Jobs are submitted with ``JobSubmissionClient`` to ``DJANGO_RAY["RAY_ADDRESS"]``. The
entrypoint is ``python -m django_ray.runtime.job <worker id> <job id>``; the message waits
for the job in the database (``JobPayload``), so no task data reaches a shell command or
Ray's job list, and a message of any size can start. Submission ids are
deterministic per task attempt (``django-ray-<task id>-<retries>``), so a restarted worker
that receives the same attempt again attaches to the existing job instead of submitting
it twice. Statuses are polled every ``JOB_POLL_INTERVAL`` seconds; a job that died
(killed, OOM, node lost) is retried if attempts remain, else FAILED. A client's
``revoke(terminate=True)`` stops the job and stores REVOKED "terminated".
"""

from __future__ import annotations

import logging
import re
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any

from django_ray import conf
from django_ray.exceptions import ModeNotAvailable, ProcessSetupFailed
from django_ray.message import TaskMessage
from django_ray.runners.base import BaseRunner, Completion
from django_ray.runners.ray_support import ray_options_for, runtime_env
from django_ray.runtime import settle
from django_ray.runtime.job import SETUP_FAILED_TAG, encode_argument

logger = logging.getLogger(__name__)

__all__ = ["JobRunner", "submission_id"]

FINISHED_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}
ENCODED_ARGUMENT = re.compile(r"[A-Za-z0-9_=-]{32,}")


def submission_id(message: TaskMessage) -> str:
    """Return the job id of this attempt of ``message`` (the same after a worker restart)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in message.id)[:100]
    return f"django-ray-{safe}-{message.retries}"


@dataclass
class _Job:
    message: TaskMessage
    delivery: Any
    # The hard time limit counts from when the job is seen RUNNING, not from submission.
    deadline: float | None = None


class JobRunner(BaseRunner):
    mode = "job"

    def __init__(self, *, worker_id: str, concurrency: int | None = None, **options: Any):
        super().__init__(worker_id=worker_id, concurrency=concurrency or 4, **options)
        self.address = options.get("address") or conf.get("RAY_ADDRESS")
        if not self.address:
            raise ModeNotAvailable(
                "Ray Job mode needs DJANGO_RAY['RAY_ADDRESS'] (the Ray dashboard/Jobs address, "
                "e.g. 'http://127.0.0.1:8265'); or run the worker with --local or --sync."
            )
        self.client: Any = None
        self._jobs: dict[str, _Job] = {}
        self._done: list[Completion] = []
        # Jobs stopped because a client revoked their task with terminate=True.
        self._terminating: set[str] = set()
        self._next_poll = 0.0

    def start(self) -> None:
        from django_ray import ray_connect

        self.client = ray_connect.job_client(self.address, token=conf.get("RAY_AUTH_TOKEN"))
        if self.options.get("preflight", True):
            from django_ray.runtime import preflight

            report = preflight.check(preflight.as_job(self.client, runtime_env()))
            logger.info("%s", report.text())

    def describe(self) -> str:
        return f"{super().describe()}, Ray Jobs at {self.address}"

    def submit(self, message: TaskMessage, delivery: Any) -> None:
        from django_ray.models import JobPayload

        job_id = submission_id(message)
        options = ray_options_for(message)
        # The message waits in the database for the job; only its id is on the command line.
        JobPayload.objects.update_or_create(
            pk=job_id, defaults={"payload": encode_argument(message)}
        )
        entrypoint = " ".join(
            shlex.quote(part)
            for part in (sys.executable, "-m", "django_ray.runtime.job",
                         f"{self.worker_id}/job", job_id)
        )  # fmt: skip
        extra_env = options.get("runtime_env")
        try:
            self.client.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env=runtime_env(extra_env),
                entrypoint_num_cpus=options.get("entrypoint_num_cpus"),
                entrypoint_num_gpus=options.get("entrypoint_num_gpus"),
                entrypoint_memory=options.get("entrypoint_memory"),
                entrypoint_resources=options.get("entrypoint_resources"),
            )
        except Exception as e:
            if "already exists" not in str(e):
                # The Jobs API is unreachable or refused it: give the message back (the
                # worker pauses with back-off) rather than let the error stop the worker.
                # Its text may quote the entrypoint, whose argument is the task's data.
                reason = ENCODED_ARGUMENT.sub("<message>", " ".join(str(e).split()))[:300]
                failure = RuntimeError(f"could not submit job {job_id}: {reason}")
                self._done.append(Completion(message, delivery, error=failure))
                return
            logger.info("Job %s already submitted; attaching to it.", job_id)
        self._jobs[job_id] = _Job(message, delivery)

    def in_flight(self) -> int:
        return len(self._jobs)

    def terminate(self, task_id: str) -> bool:
        """Stop the Ray job running ``task_id``."""
        # A snapshot: the control thread calls this while the worker loop polls.
        for job_id, job in list(self._jobs.items()):
            if job.message.id == task_id:
                self._terminating.add(job_id)
                self.client.stop_job(job_id)
                return True
        return False

    def poll(self, timeout: float = 0) -> list[Completion]:
        now = time.monotonic()
        if self._jobs and now < self._next_poll and timeout:
            time.sleep(min(timeout, self._next_poll - now))
        if self._jobs and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + float(conf.get("JOB_POLL_INTERVAL"))
            for job_id in list(self._jobs):
                self._check(job_id)
        done, self._done = self._done, []
        return done

    def _check(self, job_id: str) -> None:
        job = self._jobs[job_id]
        try:
            status = str(self.client.get_job_status(job_id))
        except Exception as e:  # the Jobs API is unreachable: give the message back
            logger.error("Could not read the status of job %s: %s", job_id, e)
            self._jobs.pop(job_id)
            self._done.append(Completion(job.message, job.delivery, error=e))
            return
        status = status.rsplit(".", 1)[-1]
        if status not in FINISHED_STATES:
            limit = job.message.time_limit
            if status == "RUNNING" and limit and job.deadline is None:
                job.deadline = time.monotonic() + limit
            if job.deadline is not None and time.monotonic() >= job.deadline:
                self.client.stop_job(job_id)
            return
        self._jobs.pop(job_id)
        from django_ray.models import JobPayload

        JobPayload.objects.filter(pk=job_id).delete()  # what a job that never started left
        if job_id in self._terminating:
            self._terminating.discard(job_id)
            outcome = settle.revoked(job.message, "terminated")
        else:
            outcome = self._outcome(job, status)
        self._done.append(Completion(job.message, job.delivery, outcome=outcome))

    def _outcome(self, job: _Job, status: str) -> settle.Outcome:
        from django_ray.records import record_for
        from django_ray.runtime.bootstrap import check_connections

        check_connections()
        record = record_for(job.message)
        if status == "SUCCEEDED" or record.is_finished or record.status == "RETRYING":
            return settle.Outcome(task_id=job.message.id, status=record.status)
        if job.deadline is not None and time.monotonic() >= job.deadline:
            return settle.time_limit(job.message, self.worker_id)
        text = self._job_text(submission_id(job.message))
        setup_failure = next(
            (line for line in text.splitlines() if line.startswith(SETUP_FAILED_TAG)), None
        )
        if setup_failure is not None:
            # The job's process could not be set up: every attempt would fail the same way.
            error = ProcessSetupFailed(setup_failure.removeprefix(SETUP_FAILED_TAG).strip())
            return settle.failed(job.message, error, with_traceback=False)
        # Ray quotes the entrypoint, whose last argument is the encoded message.
        info = ENCODED_ARGUMENT.sub("<message>", text.split(", last available logs")[0])[:300]
        return settle.lost(job.message, self.worker_id, f"Ray job {status}: {info}")

    def _job_text(self, job_id: str) -> str:
        """Return Ray's account of why the job ended (with the last lines of its logs)."""
        try:
            return str(self.client.get_job_info(job_id).message or "")
        except Exception:
            return ""

    def shutdown(self, *, wait: bool = True) -> None:
        while wait and self._jobs:
            self._done.extend(self.poll(0.2))
        if not wait:
            for job_id in list(self._jobs):
                try:
                    self.client.stop_job(job_id)
                except Exception:
                    logger.debug("Could not stop job %s.", job_id, exc_info=True)
            self._jobs.clear()
