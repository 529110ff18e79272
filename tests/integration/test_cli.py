"""The `kinemesh` command line, run as a user would: a subprocess of the installed entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from kinemesh.services.devstack import Stack
from tests import media

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "services/common/result.schema.json").read_text())
pytestmark = pytest.mark.slow


def kinemesh(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kinemesh", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_run_writes_a_valid_result_for_the_real_clip(clips: dict[str, Path], model_dir: Path,
                                                      tmp_path: Path) -> None:
    out = kinemesh("run", str(clips["single_cam01"]), "--out", str(tmp_path),
                   env={"KINEMESH_MODEL_DIR": str(model_dir)})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    jsonschema.validate(result, SCHEMA)
    assert result.get("job_id") is None
    assert result["summary"]["frames_with_person"] >= 0.95 * result["summary"]["frames"] > 0
    assert (tmp_path / "keypoints.npz").stat().st_size > 0
    assert (tmp_path / "mesh_track0.glb").read_bytes()[:4] == b"glTF"
    assert result["summary"]["body"]["frames_meshed"] == result["summary"]["frames_with_person"]
    assert "frames meshed" in out.stderr


def test_run_without_the_body_output_skips_the_body_stage(clips: dict[str, Path], model_dir: Path,
                                                          tmp_path: Path) -> None:
    out = kinemesh("run", str(clips["single_cam02"]), "--out", str(tmp_path), "--fps", "10",
                   "--outputs", "keypoints_2d", env={"KINEMESH_MODEL_DIR": str(model_dir)})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert "body" not in result["summary"] and "body_model" not in result
    assert [a["name"] for a in result["artifacts"]] == ["keypoints.npz"]
    assert [t["stage"] for t in result["timings"]] == ["decode", "keypoints", "results"]
    bad = kinemesh("run", str(clips["single_cam02"]), "--out", str(tmp_path / "x"), "--outputs", "mesh")
    assert bad.returncode == 2 and "bad options" in bad.stderr


def test_run_reports_bad_input_with_its_code(tmp_path: Path, model_dir: Path) -> None:
    bad = media.make_png(tmp_path / "photo.mp4")
    out = kinemesh("run", str(bad), "--out", str(tmp_path / "o"), env={"KINEMESH_MODEL_DIR": str(model_dir)})
    assert out.returncode == 2 and "not_a_video" in out.stderr
    assert not (tmp_path / "o" / "result.json").exists()


def test_bundle_command_helps_and_lists_its_subcommands() -> None:
    for args in (("bundle", "--help"), ("bundle",)):
        out = kinemesh(*args)
        assert out.returncode == 0, out.stderr
        assert "usage: kinemesh bundle" in out.stdout and all(c in out.stdout for c in ("build", "show", "fp16", "tune"))
    out = kinemesh("bundle", "tune", "--device", "tpu")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_schema_command_prints_the_committed_schema() -> None:
    out = kinemesh("schema")
    assert out.returncode == 0 and json.loads(out.stdout) == SCHEMA


def test_submit_waits_and_saves_the_result(stack: Stack, tmp_path: Path) -> None:
    key = stack.create_key("cli")
    clip = media.make_video(tmp_path / "c.mp4", frames=6, size=(96, 96), fps=10)
    out = kinemesh("submit", str(clip), "--wait", "--out", str(tmp_path / "out"),
                   env={"KINEMESH_URL": stack.url, "KINEMESH_API_KEY": key})
    assert out.returncode == 0, out.stderr[-2000:]
    job = json.loads(out.stdout.strip().splitlines()[-1])
    assert job["state"] == "succeeded"
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["job_id"] == job["id"]


def test_submit_without_a_key_says_how_to_get_one(stack: Stack, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KINEMESH_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "kinemesh", "submit", str(tmp_path / "x.mp4"), "--url", stack.url],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "keys create" in out.stderr


def test_keys_create_refuses_a_bad_tenant(stack: Stack) -> None:
    out = kinemesh("keys", "create", "--tenant", "Not Valid", env=stack.env)
    assert out.returncode == 2 and "tenant" in out.stderr
