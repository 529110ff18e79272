"""The committed hand model (MMHMR's method, trained by the project on synthetic hands): its record,
the bundle's ONNX graphs scoring a fresh held-out synthetic set, and the worker's mirroring of left
hands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from kinemesh.models.backends import OrtBackend
from kinemesh.models.camera import normalize_keypoints
from kinemesh.models.export.bundle import open_bundle
from kinemesh.models.genhmr.decoding import BackendStepFn
from kinemesh.models.genhmr.inference import BackendDecoder, predict_bodies
from kinemesh.models.hands.skeleton import HandSkeleton
from kinemesh.models.hands.synth import generate
from kinemesh.models.rotations import rot6d_to_matrix
from kinemesh.models.training.metrics import pa_mpjpe_mm
from kinemesh.services.worker.stages.hands import HandObservation, HandsResult, HandStage

WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights" / "hands"


def test_the_training_record_meets_the_target() -> None:
    record = json.loads((WEIGHTS / "record.json").read_text())
    assert record["hand_pa_mpjpe_mm_synth"] <= 15, record["hand_pa_mpjpe_mm_synth"]
    assert record["seeds"] == {"train_data": 0, "held_out_data": 1, "init": 0}


def test_the_bundles_graphs_pose_unseen_synthetic_hands(model_dir: Path) -> None:
    bundle = open_bundle(model_dir / "bundle" / "default")
    backend = OrtBackend(device="cpu")
    for graph in ("hand_step", "hand_tokenizer_decode"):
        assert bundle.weights(graph) == {"status": "trained", "record": "hand_record.json"}
        backend.load(graph, bundle.graph_path(graph))
    skeleton = HandSkeleton.from_file(bundle.path(bundle.manifest["hands"]["skeleton"]))
    data = generate(skeleton, 400, seed=7)  # neither the training (0) nor the record's held-out (1) seed
    cfg = bundle.manifest["graphs"]["hand_step"]["config"]
    pred = predict_bodies(BackendStepFn(backend, "hand_step", cfg["num_tokens"], cfg["codebook_size"]),
                          BackendDecoder(backend, "hand_tokenizer_decode"), data.keypoints, 5)
    rot = torch.cat([rot6d_to_matrix(pred.orient6d)[:, None], rot6d_to_matrix(pred.body6d)], 1)
    with torch.no_grad():
        points = skeleton(rot, pred.shape[:, 0].exp())
    err = pa_mpjpe_mm(points, data.keypoints3d)
    assert float(err.mean()) <= 15, float(err.mean())


def test_a_left_hand_is_posed_as_the_mirror_of_the_right(model_dir: Path) -> None:
    """The same keypoints given as a right hand and, mirrored, as a left hand: the left hand's pose is
    the right's mirror image (points x -> -x, rotations M R M)."""
    bundle = open_bundle(model_dir / "bundle" / "default")
    stage = HandStage(model_dir, bundle=bundle, backend=OrtBackend(device="cpu"))
    try:
        assert stage.pose_model == "mmhmr_hand_small"
        skeleton = HandSkeleton.from_file(bundle.path(bundle.manifest["hands"]["skeleton"]))
        data = generate(skeleton, 6, seed=9, noise=0.0, drop=0.0)
        px = (data.keypoints[..., :2] * 80 + torch.tensor([400.0, 300.0])).numpy()  # box units to pixels
        result = HandsResult()
        for k in range(len(px)):
            right = HandObservation(px[k].astype(np.float32), np.zeros((21, 3), np.float32), 1.0)
            left = HandObservation((px[k] * [-1, 1] + [1000, 0]).astype(np.float32), np.zeros((21, 3), np.float32), 1.0)
            result.hands[(0, k)] = {"right": right, "left": left}
        stage._poses([(side, h) for sides in result.hands.values() for side, h in sides.items()])
        mirror = np.diag([-1.0, 1.0, 1.0])
        for sides in result.hands.values():
            rh, lh = sides["right"].pose, sides["left"].pose
            assert np.allclose(lh.joints_3d, rh.joints_3d * [-1, 1, 1], atol=1e-4)
            assert np.allclose(lh.orient, mirror @ rh.orient @ mirror, atol=1e-4)
            assert np.allclose(lh.fingers, mirror @ rh.fingers @ mirror, atol=1e-4)
            assert abs(lh.size - rh.size) < 1e-4
        # and the right hands' poses fit their keypoints: the posed points project onto them
        for k, sides in result.hands.items():
            pose = sides["right"].pose
            uv = pose.joints_3d[:, :2] * [1, -1]
            box = normalize_keypoints(torch.from_numpy(px[k[1]])[None], torch.ones(1, 21)).keypoints[0, :, :2].numpy()
            aligned = (uv - uv.mean(0)) / np.linalg.norm(uv - uv.mean(0)) * np.linalg.norm(box - box.mean(0))
            assert np.abs(aligned - (box - box.mean(0))).mean() < 0.1
    finally:
        stage.close()
