"""A worker SIGKILLed mid-job loses nothing: the job is redelivered and finishes exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from kinemesh.services.client import Client
from kinemesh.services.devstack import Stack

pytestmark = pytest.mark.slow

# Redelivery happens once the broker's visibility timeout (job limit + margin) has passed;
# a short one keeps the test short. Production keeps it above the longest job.
JOB_LIMIT_S = 30


def test_killed_worker_job_finishes_exactly_once(redis_url: str, model_dir: Path, clips: dict[str, Path],
                                                 tmp_path: Path) -> None:
    stack = Stack.create(redis_url, tmp_path / "stack", model_dir, KINEMESH_JOB_TIME_LIMIT_S=str(JOB_LIMIT_S),
                         KINEMESH_VISIBILITY_MARGIN_S="0")
    try:
        stack.start_gateway()
        first = stack.start_worker()
        client = Client(stack.url, stack.create_key("acme"))
        job = client.submit(clips["single_cam01"], target_fps=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            doc = client.get(job["id"])
            if doc["state"] == "running" and doc["stage"] == "keypoints" and doc["progress"] > 0.1:
                break
            time.sleep(0.02)
        assert doc["state"] == "running" and doc["progress"] < 1.0, doc
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert client.get(job["id"])["state"] == "running"  # nobody finished it

        stack.start_worker()
        final = client.wait(job["id"])
        assert final["state"] == "succeeded", final.get("error")
        assert final["attempts"] == 2
        r = stack.redis()
        assert r.hget(f"{stack.prefix}:job:{job['id']}", "completions") == "1"
        result = client.result(job["id"])
        assert result["summary"]["frames_with_person"] >= 0.95 * result["summary"]["frames"]
        # the message was acknowledged: nothing is left to redeliver
        assert r.hlen(f"{stack.prefix}:celery:unacked") == 0
        assert r.llen(stack.queue) == 0
    finally:
        stack.stop()
