"""A real Ray head for the cluster and job modes, started once per test session."""

from __future__ import annotations

from tests.raycluster import ray_head_fixture

ray_head = ray_head_fixture(scope="session")
