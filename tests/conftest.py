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


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster for the whole session (2 CPUs, like CI)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
