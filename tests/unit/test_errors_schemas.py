"""Error table and wire-format invariants."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from kinemesh.services.common.errors import KinemeshError, all_error_types
from kinemesh.services.common.schemas import JobOptions, KinemeshResult, result_json_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "services" / "common" / "result.schema.json"


def test_error_codes_are_unique_and_mapped() -> None:
    types = all_error_types()
    codes = [t.code for t in types]
    assert len(codes) == len(set(codes)), "every error type needs its own stable code"
    for t in types:
        assert 400 <= t.http_status <= 599
        assert t.grpc_status.isupper()
        if t.retryable:
            assert t.http_status == 503, "only unavailability is transient"


def test_client_errors_are_not_retryable() -> None:
    for t in all_error_types():
        if t.http_status < 500:
            assert not t.retryable, t.code


def test_problem_carries_extra_members() -> None:
    err = KinemeshError("boom", limit_bytes=5)
    assert err.problem("/v1/jobs/x") == {
        "type": "https://kinemesh.dev/problems/internal_error", "title": "Internal error", "status": 500,
        "detail": "boom", "code": "internal_error", "limit_bytes": 5, "instance": "/v1/jobs/x"}


def test_committed_schema_matches_models() -> None:
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == json.loads(json.dumps(result_json_schema())), (
        "result.schema.json is stale: run `kinemesh schema > services/common/result.schema.json`")


def test_schema_rejects_wrong_landmark_count(sample_result: dict) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(sample_result, schema)
    broken = json.loads(json.dumps(sample_result))
    broken["tracks"][0]["frames"][0]["keypoints_2d"] = broken["tracks"][0]["frames"][0]["keypoints_2d"][:32]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    wrong_version = dict(sample_result, schema_version=1)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong_version, schema)


@pytest.mark.parametrize("bad", [{"target_fps": 0}, {"max_people": 0}, {"max_people": 99},
                                 {"outputs": []}, {"outputs": ["mesh_please"]}, {"surprise": 1}, {"ik": "magic"}])
def test_job_options_reject_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        JobOptions.model_validate(bad)


@pytest.fixture
def sample_result() -> dict:
    kp2 = [[10.0 + i, 20.0, 0.9, 0.95] for i in range(33)]
    kp3 = [[0.01 * i, 0.0, 0.1] for i in range(33)]
    doc = {
        "schema_version": 3, "job_id": "abc", "created_at": "2026-11-28T10:00:00Z",
        "software": {"name": "kinemesh", "version": "0.1.0"},
        "options": {"target_fps": 30.0, "max_people": 1, "outputs": ["keypoints_2d", "keypoints_3d"]},
        "clip": {"width": 1080, "height": 1920, "rotation_deg": 0, "source_fps": 60.0, "target_fps": 30.0,
                 "duration_s": 1.7, "source_frames": 102, "codec": "h264", "container": "mov,mp4"},
        "keypoint_model": {"name": "m", "landmark_names": ["x"] * 33, "source": "s"},
        "summary": {"frames": 1, "frames_with_person": 1, "tracks": 1, "seconds": 0.5},
        "timings": [{"stage": "keypoints", "seconds": 0.4}],
        "frames": [{"index": 0, "timestamp_s": 0.0, "track_ids": [0],
                    "quality": {"person_detected": True, "people": 1, "flags": []}}],
        "tracks": [{"track_id": 0, "first_frame": 0, "last_frame": 0,
                    "frames": [{"index": 0, "bbox": [0, 0, 10, 10], "score": 0.9,
                                "keypoints_2d": kp2, "keypoints_3d": kp3}]}],
    }
    KinemeshResult.model_validate(doc)  # the pydantic model and the schema agree on a valid document
    return doc


def test_schema_carries_bodies_and_rejects_a_wrong_joint_count(sample_result: dict) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    body = {"global_orient": [0.1, 0.0, 0.0], "body_pose": [[0.0, 0.0, 0.0]] * 21, "camera": [1.5, 0.0, 0.1],
            "translation": [0.0, 0.2, -4.0], "joints_3d": [[0.0, 0.0, -4.0]] * 24,
            "reprojection_error_px": 3.5, "reprojection_error_before_px": 9.0}
    doc = json.loads(json.dumps(sample_result))
    doc["tracks"][0]["frames"][0]["body"] = body
    doc["tracks"][0]["body"] = {"shape": [0.0] * 10, "frames_meshed": 1, "reprojection_error_px_before": 9.0,
                                "reprojection_error_px_after": 3.5, "mesh_artifact": "mesh_track0.glb"}
    doc["artifacts"] = [{"name": "mesh_track0.glb", "media_type": "model/gltf-binary", "size_bytes": 10,
                         "description": "mesh"}]
    jsonschema.validate(doc, schema)
    KinemeshResult.model_validate(doc)
    doc["tracks"][0]["frames"][0]["body"]["body_pose"] = [[0.0, 0.0, 0.0]] * 20
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_kinematics_output_needs_the_body_output() -> None:
    from pydantic import ValidationError

    from kinemesh.services.common.schemas import JobOptions

    assert "kinematics" in JobOptions().outputs and "body" in JobOptions().outputs
    assert JobOptions().ik == "neurik" and JobOptions(ik="opensim").ik == "opensim"  # NeurIK unless asked
    with pytest.raises(ValidationError, match="kinematics"):
        JobOptions(outputs=["keypoints_2d", "kinematics"])
    assert JobOptions(outputs=["body"]).outputs == ["body"]
