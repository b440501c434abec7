"""Drive a ``LocalRunner`` directly (run as a script by test_packs.py), print JSON.

``learn QUEUE N``: submit N no-op tasks, report how many Ray calls ran them.
``dead QUEUE``: launch one pack [noop, crash_always, noop, noop] by hand, report the
outcomes each message came back with, and how many calls ran.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import django

    django.setup()
    from django_ray.message import TaskMessage
    from django_ray.runners.local import LocalRunner
    from tests import tasks

    command, queue = sys.argv[1], sys.argv[2]

    def message(task: object) -> TaskMessage:
        result = task.using(queue_name=queue).enqueue()  # type: ignore[attr-defined]
        return TaskMessage(id=result.id, task=result.task.module_path, queue=queue,
                           backend="default")  # fmt: skip

    runner = LocalRunner(worker_id="packs", num_cpus=1)
    runner.start()
    calls: list[int] = []
    launch = runner._launch

    def counting(members: list) -> None:  # type: ignore[type-arg]
        calls.append(len(members))
        launch(members)

    runner._launch = counting  # type: ignore[method-assign]
    done: dict[str, dict[str, object]] = {}
    try:
        if command == "learn":
            for _ in range(int(sys.argv[3])):
                runner.submit(message(tasks.noop), None)
            wanted = int(sys.argv[3])
        else:
            members = [message(t) for t in (tasks.noop, tasks.crash_always, tasks.noop, tasks.noop)]
            runner._launch([(m, None) for m in members])
            wanted = len(members)
        deadline = time.monotonic() + 120
        while len(done) < wanted and time.monotonic() < deadline:
            for c in runner.poll(0.2):
                outcome = c.outcome
                done[c.message.id] = {
                    "status": None if outcome is None else str(outcome.status),
                    "duplicate": None if outcome is None else outcome.duplicate,
                    "error": None if c.error is None else repr(c.error),
                }
    finally:
        runner.shutdown(wait=False)
    print(json.dumps({"calls": calls, "done": done}))


if __name__ == "__main__":
    main()
