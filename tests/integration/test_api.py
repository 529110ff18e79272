"""The real stack end to end: uvicorn gateway, Celery worker process, Redis, real clips."""

from __future__ import annotations

import io
import json
import socket
import time
import uuid
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pygltflib
import pytest

from kinemesh.services.client import ApiError, Client
from kinemesh.services.devstack import Stack
from tests import media

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "services/common/result.schema.json").read_text())
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keys(stack: Stack) -> dict[str, str]:
    return {t: stack.create_key(t) for t in ("acme", "globex")}


@pytest.fixture(scope="module")
def acme(stack: Stack, keys: dict[str, str]) -> Client:
    return Client(stack.url, keys["acme"])


@pytest.fixture(scope="module")
def finished_job(acme: Client, clips: dict[str, Path]) -> dict:
    job = acme.submit(clips["single_cam01"], target_fps=30)
    return acme.wait(job["id"])


def _stored_files(stack: Stack, tenant: str) -> list[Path]:
    root = stack.root / "storage" / "tenants" / tenant
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _stored_jobs(stack: Stack, tenant: str) -> set[str]:
    """Job folders in storage (a running job may add files to its own folder meanwhile)."""
    root = stack.root / "storage" / "tenants" / tenant / "jobs"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def _spool_files(stack: Stack) -> list[Path]:
    spool = stack.root / "spool"
    return list(spool.iterdir()) if spool.exists() else []


def test_real_clip_gives_landmarks_on_every_person_frame(acme: Client, finished_job: dict) -> None:
    assert finished_job["state"] == "succeeded", finished_job.get("error")
    assert finished_job["attempts"] == 1 and finished_job["progress"] == 1.0
    result = acme.result(finished_job["id"])
    jsonschema.validate(result, SCHEMA)
    w, h = result["clip"]["width"], result["clip"]["height"]
    assert (w, h) == (1080, 1920)
    frames = result["frames"]
    with_person = [f for f in frames if f["quality"]["person_detected"]]
    assert len(with_person) >= 0.95 * len(frames)
    assert result["summary"]["frames_with_person"] == len(with_person)
    seen = 0
    for track in result["tracks"]:
        for tf in track["frames"]:
            kp = np.asarray(tf["keypoints_2d"])  # (33, 4)
            assert kp.shape == (33, 4)
            assert (kp[:, 0] >= 0).all() and (kp[:, 0] <= w).all() and (kp[:, 1] >= 0).all() and (kp[:, 1] <= h).all()
            assert np.asarray(tf["keypoints_3d"]).shape == (33, 3)
            seen += 1
    assert seen >= len(with_person)
    # timestamps follow the requested 30 fps from a 60 fps source
    ts = np.asarray([f["timestamp_s"] for f in frames])
    assert np.allclose(np.diff(ts), 1 / 30, atol=0.005)


def test_artifact_listing_and_download(acme: Client, finished_job: dict) -> None:
    kinematics = [f"kinematics_track0.{ext}" for ext in ("csv", "mot", "osim", "png", "trc")]
    assert finished_job["artifacts"] == sorted(["keypoints.npz", "mesh.npz", "mesh_track0.glb", *kinematics])
    resp = acme.http.get(f"/v1/jobs/{finished_job['id']}/artifacts/keypoints.npz")
    assert resp.status_code == 200
    arrays = np.load(io.BytesIO(resp.content))
    assert arrays["keypoints_2d"].shape[2:] == (33, 4)
    assert acme.http.get(f"/v1/jobs/{finished_job['id']}/artifacts/nope.bin").status_code == 404
    assert acme.http.get(f"/v1/jobs/{finished_job['id']}/artifacts/..%2Fresult.json").status_code == 404


def test_job_returns_bodies_and_an_animated_mesh(acme: Client, finished_job: dict) -> None:
    """The body stage through the real service: per-frame bodies, a refinement that lowered the
    2D error, and a GLB that an independent glTF reader opens with one frame per body."""
    result = acme.result(finished_job["id"])
    assert result["schema_version"] == 3
    model, summary = result["body_model"], result["summary"]["body"]
    assert model["trained"] and model["refinement_steps"] > 0 and len(model["joint_names"]) == 24
    (track,) = result["tracks"]
    bodies = [tf["body"] for tf in track["frames"]]
    assert all(b is not None for b in bodies) and summary["frames_meshed"] == len(bodies) >= 45
    joints = np.asarray([b["joints_3d"] for b in bodies])  # (T, 24, 3) camera frame
    assert np.isfinite(joints).all() and (joints[..., 2] < 0).all()  # in front of the camera (it looks down -z)
    height = joints[:, :, 1].max(1) - joints[:, :, 1].min(1)  # head-to-ankle joint span of a standing person
    assert 0.8 < np.median(height) < 2.2
    assert summary["reprojection_error_px_after"] < summary["reprojection_error_px_before"]
    assert summary["reprojection_error_bbox_frac_after"] < 0.05
    infos = {a["name"]: a for a in result["artifacts"]}
    assert infos["mesh_track0.glb"]["media_type"] == "model/gltf-binary"
    assert track["body"]["mesh_artifact"] == "mesh_track0.glb"

    glb = acme.artifact(finished_job["id"], "mesh_track0.glb")
    assert infos["mesh_track0.glb"]["size_bytes"] == len(glb)
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    blob = gltf.binary_blob()
    (mesh,) = gltf.meshes
    prim = mesh.primitives[0]
    positions = _accessor(gltf, blob, prim.attributes.POSITION)
    assert positions.shape[1] == 3 and positions.shape[0] > 10_000
    assert len(gltf.skins) == 1 and len(gltf.skins[0].joints) > 20
    (anim,) = gltf.animations
    times = _accessor(gltf, blob, anim.samplers[0].input)
    assert len(times) == len(bodies) and (np.diff(times) > 0).all()

    npz = np.load(io.BytesIO(acme.artifact(finished_job["id"], "mesh.npz")))
    verts = npz["track0_vertices"].astype(np.float32)  # (T, V, 3)
    assert verts.shape == (len(bodies), positions.shape[0], 3)
    assert np.allclose(npz["track0_joints"], joints, atol=1e-3)
    # the documented skinning formula gives the same vertices as the posed ones
    g, w = npz["track0_node_rotations"][-1], npz["track0_node_heads"][-1]  # (N, 3, 3), (N, 3)
    x, h = npz["track0_rest_vertices"], npz["track0_rest_heads"]
    skinned = np.einsum("vn,nvc->vc", npz["skin_weights"], np.einsum("nij,nvj->nvi", g, x[None] - h[:, None]) + w[:, None])
    assert np.abs(skinned - verts[-1]).max() < 5e-3  # float16 storage of the posed vertices


def test_job_returns_kinematics_and_opensim_files(acme: Client, finished_job: dict, tmp_path) -> None:
    """The kinematics stage through the real service: OpenSim-named coordinates per frame inside a
    plausible range, the model, method and filter stated, and .mot/.trc/.osim files OpenSim loads."""
    import opensim

    result = acme.result(finished_job["id"])
    model, summary = result["kinematics_model"], result["summary"]["kinematics"]
    names = model["coordinate_names"]
    assert {"pelvis_tilt", "hip_flexion_r", "knee_angle_r", "ankle_angle_r", "arm_flex_r", "elbow_flex_r"} <= set(names)
    assert model["method"] == "neurik" and "6 Hz" in model["filter"] and "BSD-3" in model["model"]
    assert model["fit_iterations"] == 10  # the default marker fit after the network (KINEMESH_NEURIK_FIT_ITERATIONS)
    assert set(model["fixed_coordinates"]) == {"neck_flexion", "neck_bending", "neck_rotation", "mtp_angle_r",
                                               "mtp_angle_l", "wrist_flex_r", "wrist_dev_r", "wrist_flex_l",
                                               "wrist_dev_l"}
    assert model["coordinate_units"][names.index("knee_angle_r")] == "deg"
    assert model["coordinate_units"][names.index("pelvis_tx")] == "m"
    (track,) = result["tracks"]
    coords = np.asarray([tf["kinematics"]["coordinates"] for tf in track["frames"]])  # (T, C)
    assert coords.shape == (len(track["frames"]), len(names)) and np.isfinite(coords).all()
    knee = coords[:, names.index("knee_angle_r")]
    assert -5 < knee.min() and knee.max() < 160  # degrees, within what a knee does
    assert not coords[:, [names.index(n) for n in model["fixed_coordinates"]]].any()
    tk = track["kinematics"]
    assert summary["frames"] == tk["frames"] == len(coords) and 0 < summary["marker_error_rms_m"] < 0.05
    assert {s["body"] for s in tk["scale_factors"]} >= {"pelvis", "femur_r", "tibia_l"}
    ranges = {r["name"]: r for r in tk["ranges"]}
    assert ranges["knee_angle_r"]["min"] == pytest.approx(knee.min(), abs=1e-3)
    for kind in ("mot", "trc", "osim"):
        (tmp_path / f"t.{kind}").write_bytes(acme.artifact(finished_job["id"], tk[f"{kind}_artifact"]))
    times, = [opensim.TimeSeriesTable(str(tmp_path / "t.mot")).getIndependentColumn()]
    assert len(times) == len(coords)
    assert opensim.TimeSeriesTableVec3(str(tmp_path / "t.trc")).getNumRows() == len(coords)
    assert opensim.Model(str(tmp_path / "t.osim")).getCoordinateSet().getSize() == len(names)
    assert acme.artifact(finished_job["id"], tk["plot_artifact"])[:8] == b"\x89PNG\r\n\x1a\n"
    csv_head = acme.artifact(finished_job["id"], tk["csv_artifact"]).decode().splitlines()[0]
    assert csv_head.startswith("frame,time_s,pelvis_tilt (deg)")


_GLTF_TYPES = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}
_GLTF_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def _accessor(gltf: pygltflib.GLTF2, blob: bytes, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    width = _GLTF_WIDTH[acc.type]
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    data = np.frombuffer(blob, _GLTF_TYPES[acc.componentType], acc.count * width, start)
    return data.reshape(acc.count, width) if width > 1 else data


def test_events_stream_ends_and_progress_is_monotonic(acme: Client, clips: dict[str, Path]) -> None:
    job = acme.submit(clips["single_cam01"], target_fps=15)
    with acme.http.stream("GET", f"/v1/jobs/{job['id']}/events") as resp:
        ids = [int(line[3:]) for line in resp.iter_lines() if line.startswith("id:")]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "event ids increase strictly"
    events = list(acme.events(job["id"]))  # a late listener gets the final state at once
    assert len(events) == 1 and events[-1]["state"] == "succeeded"
    events = list(acme.events(acme.submit(clips["single_cam01"], target_fps=15)["id"]))
    assert events[-1]["state"] == "succeeded"
    progress = [e["progress"] for e in events if e["state"] == "running"]
    assert progress == sorted(progress)
    assert {e["stage"] for e in events} >= {"keypoints"}


def test_a_job_asking_for_hands_returns_them(acme: Client, clips: dict[str, Path]) -> None:
    """outputs=hands: each tracked person's hands, 21 keypoints a side, on a real clip; the result
    validates against the published schema and names the hand model."""
    job = acme.submit(clips["single_cam01"], target_fps=15, outputs="keypoints_2d,hands")
    assert acme.wait(job["id"])["state"] == "succeeded"
    result = acme.result(job["id"])
    jsonschema.validate(result, SCHEMA)
    assert result["hand_model"]["name"] == "mediapipe-hand-landmarker-full"
    assert len(result["hand_model"]["landmark_names"]) == 21
    frames = result["tracks"][0]["frames"]
    with_hands = [f for f in frames if f.get("hands")]
    assert len(with_hands) >= len(frames) // 2, (len(with_hands), len(frames))
    hand = next(h for f in with_hands for h in f["hands"].values() if h)
    assert len(hand["keypoints_2d"]) == 21 and len(hand["keypoints_3d"]) == 21
    # posed by the default bundle's hand model: 15 finger rotations, the wrist's, 21 posed points
    assert result["hand_model"]["pose_model"] == "mmhmr_hand_small" and len(result["hand_model"]["joint_names"]) == 16
    pose = hand["pose"]
    assert len(pose["fingers"]) == 15 and len(pose["joints_3d"]) == 21 and pose["size"] > 0
    palm = np.linalg.norm(np.subtract(pose["joints_3d"][9], pose["joints_3d"][0]))
    assert 0.05 < palm < 0.15, palm
    assert "body_model" not in result and any(t["stage"] == "hands" for t in result["timings"])


def test_multipart_upload_with_options(stack: Stack, keys: dict[str, str], tmp_path: Path) -> None:
    clip = media.make_video(tmp_path / "clip.mp4", frames=6, size=(160, 120), fps=10)
    with clip.open("rb") as fh:
        resp = httpx.post(f"{stack.url}/v1/jobs", headers={"X-API-Key": keys["acme"]},
                          files={"file": ("my clip.mp4", fh, "video/mp4")},
                          data={"options": json.dumps({"target_fps": 5, "outputs": ["keypoints_2d"]})})
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == f"/v1/jobs/{resp.json()['id']}"
    doc = resp.json()
    assert doc["options"]["target_fps"] == 5 and doc["options"]["outputs"] == ["keypoints_2d"]
    assert doc["clip"]["width"] == 160
    # the user's file name never reaches storage
    assert not any("my clip" in str(p) for p in _stored_files(stack, "acme"))
    done = Client(stack.url, keys["acme"]).wait(doc["id"])
    assert done["state"] == "succeeded"
    result = Client(stack.url, keys["acme"]).result(doc["id"])
    assert all("keypoints_3d" not in tf for t in result["tracks"] for tf in t["frames"])


def test_listing_is_paginated_and_per_tenant(stack: Stack, keys: dict[str, str], acme: Client,
                                             finished_job: dict) -> None:
    seen, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = acme.http.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert finished_job["id"] in seen and len(seen) == len(set(seen))
    other = Client(stack.url, keys["globex"]).http.get("/v1/jobs").json()
    assert finished_job["id"] not in [j["id"] for j in other["items"]]


@pytest.mark.parametrize("path", ["", "/result", "/events", "/artifacts/keypoints.npz"])
def test_other_tenants_get_404(stack: Stack, keys: dict[str, str], finished_job: dict, path: str) -> None:
    globex = Client(stack.url, keys["globex"])
    resp = globex.http.get(f"/v1/jobs/{finished_job['id']}{path}")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "not_found"


def test_other_tenant_cannot_delete(stack: Stack, keys: dict[str, str], acme: Client, finished_job: dict) -> None:
    assert Client(stack.url, keys["globex"]).http.delete(f"/v1/jobs/{finished_job['id']}").status_code == 404
    assert acme.get(finished_job["id"])["state"] == "succeeded"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer km_nope_nope"}, {"X-API-Key": "dev"},
                                     {"Authorization": "Basic Zm9vOmJhcg=="}])
def test_unauthenticated(stack: Stack, headers: dict[str, str]) -> None:
    resp = httpx.get(f"{stack.url}/v1/jobs", headers=headers)
    assert resp.status_code == 401 and resp.json()["code"] == "unauthenticated"
    assert resp.headers["www-authenticate"] == "Bearer"


BAD_INPUTS = {
    "empty body": (lambda d: media.write_bytes(d / "empty.mp4", b""), 422, "empty_upload"),
    "random bytes": (lambda d: media.make_random_bytes(d / "rand.mp4", 200_000), 422, "not_a_video"),
    "png named .mp4": (lambda d: media.make_png(d / "image.mp4"), 422, "not_a_video"),
    "audio only": (lambda d: media.make_audio_only(d / "audio.mp4"), 422, "no_video_stream"),
    "one frame": (lambda d: media.make_one_frame_video(d / "one.mp4"), 422, "too_few_frames"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_leaves_nothing(stack: Stack, acme: Client, tmp_path: Path, name: str) -> None:
    make, status, code = BAD_INPUTS[name]
    path = make(tmp_path)
    before = _stored_jobs(stack, "acme")
    with pytest.raises(ApiError) as exc:
        acme.submit(Path(path))
    assert (exc.value.status, exc.value.code) == (status, code), exc.value.problem
    assert exc.value.problem["title"] and exc.value.problem["detail"]
    assert _stored_jobs(stack, "acme") == before
    assert _spool_files(stack) == []


def test_truncated_mp4_is_refused(stack: Stack, acme: Client, clips: dict[str, Path], tmp_path: Path) -> None:
    cut = media.truncate(clips["single_cam01"], tmp_path / "cut.mp4", 0.5)
    before = _stored_jobs(stack, "acme")
    with pytest.raises(ApiError) as exc:
        acme.submit(cut)
    assert exc.value.status == 422 and exc.value.code in ("not_a_video", "no_decodable_frames")
    assert _stored_jobs(stack, "acme") == before


def _metric(stack: Stack, needle: str) -> float:
    for line in httpx.get(f"{stack.url}/metrics").text.splitlines():
        if line.startswith(needle):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_oversize_upload_streams_to_413(stack: Stack, keys: dict[str, str], kind: str) -> None:
    limit = 40 * 1024 * 1024
    before = _stored_jobs(stack, "acme")
    counter = 'kinemesh_http_requests_total{method="POST",route="/v1/jobs",status="413"}'
    refused_before = _metric(stack, counter)

    def body():  # chunked, no Content-Length: the gateway must count as it goes
        if kind == "multipart":
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.mp4"\r\n\r\n'
        chunk = b"\0" * (1 << 20)
        for _ in range(limit // len(chunk) + 2):
            yield chunk

    ctype = "multipart/form-data; boundary=b" if kind == "multipart" else "application/octet-stream"
    try:
        resp = httpx.post(f"{stack.url}/v1/jobs", content=body(), timeout=60,
                          headers={"X-API-Key": keys["acme"], "Content-Type": ctype})
        assert resp.status_code == 413 and resp.json()["code"] == "upload_too_large"
    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
        pass  # the server answered 413 and closed while we were still sending: the reset can eat the reply
    assert _metric(stack, counter) == refused_before + 1
    # a declared Content-Length over the limit is refused before a byte of the body is read
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-API-Key: {keys['acme']}\r\n"
                     f"Content-Length: {limit * 2}\r\n\r\n".encode())
        reply = b""
        while b"upload_too_large" not in reply:  # headers and body may arrive in separate segments
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"upload_too_large" in reply
    assert _stored_jobs(stack, "acme") == before
    assert _spool_files(stack) == []


@pytest.mark.parametrize("query", ["max_people=0", "target_fps=-1", "outputs=mesh", "colour=blue", "ik=guess"])
def test_bad_options_are_422(acme: Client, query: str, tmp_path: Path) -> None:
    clip = media.make_video(tmp_path / "c.mp4", frames=4, size=(64, 64), fps=10)
    resp = acme.http.post(f"/v1/jobs?{query}", content=clip.read_bytes())
    assert resp.status_code == 422 and resp.json()["code"] == "invalid_request"


def test_too_many_frames_for_one_job(acme: Client, tmp_path: Path) -> None:
    """The stack allows 110 sampled frames a job: 4 s at 30 fps is refused, at 10 fps accepted."""
    clip = media.make_video(tmp_path / "long.mp4", frames=120, size=(64, 64), fps=30)
    with pytest.raises(ApiError) as exc:
        acme.submit(clip, target_fps=30)
    assert (exc.value.status, exc.value.code) == (422, "too_many_frames")
    assert exc.value.problem["max_frames"] == 110
    assert acme.submit(clip, target_fps=10)["state"] == "queued"


def test_idempotency_key(acme: Client, tmp_path: Path) -> None:
    a = media.make_video(tmp_path / "a.mp4", frames=4, size=(64, 64), fps=10)
    b = media.make_video(tmp_path / "b.mp4", frames=5, size=(64, 64), fps=10)
    key = uuid.uuid4().hex
    first = acme.submit(a, idempotency_key=key)
    again = acme.submit(a, idempotency_key=key)
    assert again["id"] == first["id"]
    with pytest.raises(ApiError) as exc:
        acme.submit(b, idempotency_key=key)
    assert (exc.value.status, exc.value.code) == (422, "idempotency_key_reused")
    assert acme.submit(a, idempotency_key=uuid.uuid4().hex)["id"] != first["id"]


def test_delete_cancels_a_running_job_and_purges(stack: Stack, acme: Client, clips: dict[str, Path]) -> None:
    job = acme.submit(clips["single_cam01"], target_fps=60)
    deadline = time.monotonic() + 60
    while acme.get(job["id"])["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    resp = acme.http.delete(f"/v1/jobs/{job['id']}")
    assert resp.status_code == 202 and resp.json()["state"] == "cancelled"
    # the worker notices at its next batch and stops; nothing of the job is left in storage
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not any(job["id"] in str(p) for p in _stored_files(stack, "acme")):
            break
        time.sleep(0.1)
    time.sleep(1.0)
    assert not any(job["id"] in str(p) for p in _stored_files(stack, "acme"))
    doc = acme.get(job["id"])
    assert doc["state"] == "cancelled" and doc["finished_at"]
    resp = acme.http.get(f"/v1/jobs/{job['id']}/result")
    assert resp.status_code == 409 and resp.json()["code"] == "job_not_finished"
    # deleting a finished job removes it whole
    assert acme.http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert acme.http.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_health_readiness_and_metrics(stack: Stack, finished_job: dict) -> None:
    assert httpx.get(f"{stack.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{stack.url}/readyz").status_code == 200
    text = httpx.get(f"{stack.url}/metrics").text
    assert 'kinemesh_jobs{state="succeeded"}' in text
    assert "kinemesh_queue_depth" in text
    assert 'kinemesh_stage_seconds_count{stage="keypoints"}' in text
    assert 'kinemesh_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"}' in text
    assert httpx.get(f"{stack.url}/nope").json()["code"] == "not_found"
