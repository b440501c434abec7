"""A real Ray head for the cluster and job modes, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_head() -> Iterator[object]:
    from tests.raycluster import RayHead, require_ray

    require_ray()
    head = RayHead()
    head.start()
    try:
        yield head
    finally:
        head.stop()
