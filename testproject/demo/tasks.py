"""Example tasks the demo enqueues."""

from __future__ import annotations

import hashlib

from django.tasks import TaskContext, task


@task
def add(x: int, y: int) -> int:
    return x + y


@task(priority=10)
def word_count(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts


@task(takes_context=True)
def checksum(context: TaskContext, payload: str) -> dict[str, object]:
    digest = hashlib.sha256(payload.encode()).hexdigest()
    return {"sha256": digest, "attempt": context.attempt}


@task
async def greet(name: str) -> str:
    return f"Hello, {name}!"


@task
def divide(x: float, y: float) -> float:
    return x / y
