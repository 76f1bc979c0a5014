"""Shared test fixtures. Real data lives in ../shared/fixtures (beside the clone); S2D_FIXTURES overrides."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("S2D_FIXTURES", REPO.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"test fixtures not found at {FIXTURES}: clone next to shared/ or set S2D_FIXTURES")
    return FIXTURES


@pytest.fixture(scope="session")
def expectations(fixtures_dir) -> dict:
    return json.loads((fixtures_dir / "expectations.json").read_text())


@pytest.fixture(scope="session")
def detector_weights(fixtures_dir) -> Path:
    return fixtures_dir / "weights" / "mobilenet0.25_Final.pth"


@pytest.fixture(scope="session")
def landmark_weights(fixtures_dir) -> Path:
    return fixtures_dir / "weights" / "mobilefacenet_68pt.pth.tar"


def ensure_ray(num_cpus: int):
    """The real local Ray with ``num_cpus`` logical CPUs: started once, restarted only if a test module needs
    another size (the training jobs want 4 logical CPUs: 2 workers plus Ray Data decode tasks)."""
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("CPU") == num_cpus:
        return ray
    ray.shutdown()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


@pytest.fixture(scope="session")
def _ray_session():
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """One real local Ray cluster (2 CPUs, like CI), shared by the tests that use it."""
    return ensure_ray(2)


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server on 127.0.0.1 (tests/s3server.py), its client settings in os.environ for the
    session (nothing else here talks to S3)."""
    from s3server import S3Server, restore, set_env

    server = S3Server().start()
    old = set_env(server.env)
    try:
        yield server
    finally:
        restore(old)
        server.stop()
