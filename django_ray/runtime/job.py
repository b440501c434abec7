"""Ray Job entrypoint: ``python -m django_ray.runtime.job <worker-id> <job id>``.

The message waits in the database (``JobPayload``, the row of the job's id) as URL-safe
base64 of its protocol-v2 JSON parts: nothing a producer wrote reaches the shell that
starts the job or Ray's job list, and a message of any size can start. The job sets Django
up, reads (and removes) its message, runs the one execution path, publishes the follow-up
messages (retries, chain steps) itself and exits 0 once the outcome is stored; the worker
then reads the record.
"""

from __future__ import annotations

import base64
import json
import sys

from django_ray.message import TaskMessage, decode

__all__ = ["SETUP_FAILED_TAG", "decode_argument", "encode_argument", "main"]

# The entrypoint prints this before the reason when it cannot set its process up; the job
# runner finds the line in the job's logs and records the task FAILED with it.
SETUP_FAILED_TAG = "django-ray: process set-up failed:"
EXIT_SETUP_FAILED = 3
EXIT_NO_PAYLOAD = 4


def encode_argument(message: TaskMessage) -> str:
    """Return ``message`` as one shell-safe argument (URL-safe base64 of JSON)."""
    parts = {"headers": message.wire_headers(), "body": message.wire_body(), "queue": message.queue}
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode("ascii")


def decode_argument(value: str) -> TaskMessage:
    parts = json.loads(base64.urlsafe_b64decode(value.encode("ascii")))
    return decode(
        headers=parts["headers"],
        body=parts["body"],
        content_type="application/json",
        queue=parts["queue"],
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m django_ray.runtime.job <worker-id> <job id>", file=sys.stderr)
        return 2
    worker_id, job_id = argv
    from django_ray.exceptions import ProcessSetupFailed
    from django_ray.runtime import bootstrap

    try:
        bootstrap.ensure_ready()
    except ProcessSetupFailed as e:
        print(f"{SETUP_FAILED_TAG} {e}", file=sys.stderr, flush=True)
        return EXIT_SETUP_FAILED
    from django_ray.models import JobPayload
    from django_ray.runtime.execute import execute
    from django_ray.transport import publish_now

    row = JobPayload.objects.filter(pk=job_id).first()
    if row is None:  # already read by an earlier run of this job: nothing to run twice
        print(f"django-ray: no message waits for job {job_id}.", file=sys.stderr, flush=True)
        return EXIT_NO_PAYLOAD
    encoded = row.payload

    message = decode_argument(encoded)
    JobPayload.objects.filter(pk=job_id).delete()
    outcome = execute(message, worker_id=worker_id)
    for follow_up in outcome.publish:
        publish_now(follow_up)
    print(json.dumps({"task_id": outcome.task_id, "status": outcome.status}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
