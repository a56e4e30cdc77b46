"""Shared fixtures: a private local Ray instance on loopback, and the real Amazon samples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Before Ray or gloo start anywhere in the test session: loopback only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.pop("RAY_ADDRESS", None)
# The S3 tests talk to a local moto server; Ray workers inherit these when Ray starts.
for _name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
    os.environ[_name] = "testing"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the tests that need it; stopped at the end of the session."""
    import ray

    from eain_dist.config import RayConfig
    from eain_dist.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real Amazon samples not found at {SHARED_DATA} (they live beside the project)")
    return SHARED_DATA
