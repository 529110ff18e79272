"""Hand stage: 21 hand keypoints per tracked person and side, from MediaPipe's hand landmarker run on
a crop around each of the person's hands.

A person a few metres from the camera has hands of a few tens of pixels, too small for the palm
detector on the whole frame (on a Pose2Sim demo view it found a hand in 1 of 10 frames). So, as
MMHMR crops hands from the body's keypoints, each tracked person's BlazePose wrist, pinky, index and
thumb landmarks place a square crop (half-side `CROP_SCALE` times the largest wrist-to-finger
distance, at least `MIN_HALF_PX`), upsampled to 256 x 256 (`camera.person_crops`), and the landmarker
runs on it in IMAGE mode; its landmarks map back to frame pixels. The side is the one whose wrist
placed the crop (MediaPipe's handedness label assumes a mirrored selfie image and is not used); a
side whose wrist is not visible (BlazePose visibility < 0.5) is not searched.

Output per track: for every frame where a hand was found, per side: 21 landmarks in pixels (MediaPipe
order, `mediapipe_hands.HAND_LANDMARKS`), 21 world landmarks in metres about the hand's centre, and
the landmarker's score. The clip is decoded once more (the keypoint stage streams its frames).

Hand pose (MMHMR's method, when the bundle has the trained hand graphs): all hands of the clip go
through the exported masked transformer (`hand_step`: a graph network over the 21 keypoints, 64
pose tokens, 5 confidence-guided decoding iterations) and the tokenizer's decoder
(`hand_tokenizer_decode`): 15 finger joint rotations and the hand's size; the wrist's orientation
in the camera frame is then the rotation that best lays the posed hand onto its 2D keypoints
(`camera.fit_rotation_to_keypoints`; the transformer's own orientation head is much less precise).
The model is a right hand, so a left hand's keypoints are mirrored (x -> -x) on
the way in and its rotations (M R M, M = diag(-1, 1, 1)) and points on the way out.

Image condition (MMHMR's cross-attention to image features, when the bundle's `hand_step` takes
`image_tokens`: a bundle built from operator checkpoints with `hand_vit_backbone`): each found hand's
crop (its keypoints' square box, whole, at the backbone's crop size; mirrored for a left hand) goes
through `hand_vit_backbone`, and the step cross-attends to those tokens. Untrained hand graphs are not
served: the stage then gives keypoints only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kinemesh.models.assets.mediapipe_hands import task_path
from kinemesh.models.backends import InferenceBackend
from kinemesh.models.camera import fit_rotation_to_keypoints, normalize_keypoints, person_crops
from kinemesh.models.export.bundle import Bundle
from kinemesh.models.genhmr.decoding import BackendStepFn
from kinemesh.models.genhmr.inference import BackendDecoder, predict_bodies
from kinemesh.models.hands.skeleton import HandSkeleton
from kinemesh.models.rotations import rot6d_to_matrix
from kinemesh.services.common.bundle_check import image_conditioned
from kinemesh.services.common.errors import ModelUnavailable
from kinemesh.services.worker.stages.base import DecodedVideo, KeypointTracks, StageContext
from kinemesh.services.worker.stages.crops import box_crops, run_on_crops

STAGE = "hands"
CROP_PX = 256  # side of the square crop the landmarker sees
CROP_SCALE = 3.5  # crop half-side over the largest wrist-to-finger landmark distance
MIN_HALF_PX = 32.0
MIN_WRIST_VISIBILITY = 0.5
# BlazePose landmark ids per side: wrist, pinky, index, thumb
POSE_HAND = {"left": (15, 17, 19, 21), "right": (16, 18, 20, 22)}
POSE_GRAPHS = ("hand_step", "hand_tokenizer_decode")  # the hand model's graphs
HAND_BACKBONE = "hand_vit_backbone"  # image-conditioned hand models: the crop's tokens
STEP_BATCH = 64  # hands per call of the step graph (a clip's hands decode together, in calls of this many)
POSE_CHUNK = 512  # found hands posed together: the hands (and crops) of a long clip are posed as they come


@dataclass
class HandPose:
    orient: np.ndarray  # (3, 3) the wrist's orientation, camera frame (x right, y up, z towards the viewer)
    fingers: np.ndarray  # (15, 3, 3) finger joint rotations (thumb first), parent-relative, rest-frame axes
    joints_3d: np.ndarray  # (21, 3) the posed hand's keypoints, metres, wrist at the origin, camera axes
    size: float  # the hand's size over the skeleton's


@dataclass
class HandObservation:
    keypoints_2d: np.ndarray  # (21, 2) float32, pixels of the upright frame
    keypoints_3d: np.ndarray  # (21, 3) float32, metres, MediaPipe hand world frame (about the hand's centre)
    score: float  # the landmarker's confidence in the hand (its handedness classifier's score)
    pose: HandPose | None = None  # the hand model's pose (when the bundle has it)
    crop: np.ndarray | None = None  # (3, h, w) uint8, the hand crop an image-conditioned model reads


@dataclass
class HandsResult:
    # (track id, frame index) -> {"left" | "right": HandObservation}
    hands: dict[tuple[int, int], dict[str, HandObservation]] = field(default_factory=dict)
    searched: int = 0  # (person, frame, side) crops the landmarker looked at
    pose_model: str | None = None  # the hand pose model's architecture (None: keypoints only)

    @property
    def found(self) -> int:
        return sum(len(v) for v in self.hands.values())


def hand_box(landmarks_2d: np.ndarray, side: str) -> tuple[np.ndarray, float]:
    """Crop centre (2,) and half-side (pixels) for one side's hand from a person's 33 BlazePose
    landmarks (33, 2): centred on the wrist, pinky, index and thumb landmarks."""
    points = landmarks_2d[list(POSE_HAND[side])]  # (4, 2)
    reach = float(np.linalg.norm(points[1:] - points[0], axis=1).max())
    return points.mean(0), max(CROP_SCALE * reach, MIN_HALF_PX)


class HandStage:
    """Loads MediaPipe's hand landmarker once; `run` finds the tracked people's hands in a clip and,
    given a bundle with the hand graphs and a backend to run them, their pose."""

    name = STAGE

    def __init__(self, model_dir: Path | str, min_detection_confidence: float = 0.3, bundle: Bundle | None = None,
                 backend: InferenceBackend | None = None, device: str | torch.device = "cpu") -> None:
        self.pose_model: str | None = None
        self.device = torch.device(device)  # of the pose decoding's tensors (the body stage's)
        self._crop_size: tuple[int, int] | None = None  # (h, w) of the image condition's crops, if any
        graphs = bundle.manifest["graphs"] if bundle is not None else {}
        needed = (*POSE_GRAPHS, HAND_BACKBONE) if bundle is not None and image_conditioned(
            bundle.manifest, "hand_step") else POSE_GRAPHS
        if backend is not None and all(g in graphs and graphs[g]["trained"] for g in needed):
            for graph in needed:
                backend.load(graph, bundle.graph_path(graph))
            if HAND_BACKBONE in needed:
                self._crop_size = tuple(graphs[HAND_BACKBONE]["preprocessing"]["crop"])
            self._bundle, self._backend = bundle, backend
            cfg = bundle.manifest["graphs"]["hand_step"]["config"]
            self._step = BackendStepFn(backend, "hand_step", cfg["num_tokens"], cfg["codebook_size"],
                                       max_batch=bundle.batch_for("hand_step", backend, STEP_BATCH))
            self._decoder = BackendDecoder(backend, "hand_tokenizer_decode")
            self._skeleton = HandSkeleton.from_file(bundle.path(bundle.manifest["hands"]["skeleton"])).to(self.device)
            self.iterations = int(bundle.manifest["hands"]["decoding"]["iterations"])
            self.pose_model = bundle.manifest["graphs"]["hand_step"]["architecture"]
        path = task_path(model_dir)
        if not path.is_file():
            raise ModelUnavailable(f"MediaPipe hand model not found at {path}. Build it with "
                                   f"`python -m kinemesh.models.assets.mediapipe_hands --out {path.parent}`.",
                                   model=str(path))
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import HandLandmarker, HandLandmarkerOptions, RunningMode

        options = HandLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                        running_mode=RunningMode.IMAGE, num_hands=1,
                                        min_hand_detection_confidence=min_detection_confidence)
        try:
            self._landmarker = HandLandmarker.create_from_options(options)
        except Exception as exc:
            raise ModelUnavailable(f"MediaPipe hand model at {path} could not be loaded ({exc})",
                                   model=str(path)) from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._landmarker is not None:
                self._landmarker.close()
                self._landmarker = None

    def run(self, video: DecodedVideo, tracks: KeypointTracks, ctx: StageContext) -> HandsResult:
        import mediapipe as mp

        wanted = {f.index: f.people for f in tracks.frames if f.people}
        total = max(len(wanted), 1)
        out = HandsResult(pose_model=self.pose_model)
        done = 0
        pending: list[tuple[str, HandObservation]] = []  # found hands not yet posed
        with self._lock:
            for batch in video.batches():
                ctx.check_cancelled()
                for j, index in enumerate(batch.indices):
                    people = wanted.get(int(index))
                    if not people:
                        continue
                    done += 1
                    for tid, obs in people:
                        for side, ids in POSE_HAND.items():
                            if obs.visibility[ids[0]] < MIN_WRIST_VISIBILITY:
                                continue
                            out.searched += 1
                            center, half = hand_box(obs.landmarks_2d, side)
                            crop = person_crops(torch.from_numpy(batch.images[j])[None],
                                                torch.tensor(center[None], dtype=torch.float32),
                                                torch.tensor([half], dtype=torch.float32), (CROP_PX, CROP_PX))
                            image = (crop[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                            res = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                                   data=np.ascontiguousarray(image)))
                            if not res.hand_landmarks:
                                continue
                            uv = np.array([(p.x, p.y) for p in res.hand_landmarks[0]], np.float32)  # (21, 2) in [0, 1]
                            xy = center[None] + half * (2 * uv - 1)  # crop coordinates back to frame pixels
                            world = np.array([(p.x, p.y, p.z) for p in res.hand_world_landmarks[0]], np.float32)
                            score = float(res.handedness[0][0].score) if res.handedness else 1.0
                            hand = HandObservation(xy.astype(np.float32), world, score)
                            if self._crop_size is not None:
                                hand.crop = self._hand_crop(batch.images[j], hand.keypoints_2d, side)
                            out.hands.setdefault((tid, int(index)), {})[side] = hand
                            pending.append((side, hand))
                    ctx.progress(STAGE, done / total)
                if self.pose_model is not None and len(pending) >= POSE_CHUNK:  # memory stays bounded
                    self._poses(pending)
                    pending.clear()
            if self.pose_model is not None and pending:
                self._poses(pending)
        return out

    def _hand_crop(self, image: np.ndarray, xy: np.ndarray, side: str) -> np.ndarray:
        """The image condition's crop (3, h, w) uint8 of one hand: its keypoints' square box (as the keypoints
        are normalised), whole, at the backbone's aspect; mirrored for a left hand, as its keypoints are."""
        crop = box_crops(image, xy[None], np.ones((1, len(xy)), np.float32), self._crop_size, whole_box=True)[0]
        return np.ascontiguousarray(crop[:, :, ::-1]) if side == "left" else crop

    def _poses(self, items: list[tuple[str, HandObservation]]) -> None:
        """The pose of each (side, hand), in one batched decoding; an image-conditioned model's crops are
        read and dropped."""
        dev = self.device
        xy = torch.from_numpy(np.stack([h.keypoints_2d for _, h in items])).to(dev)  # (H, 21, 2)
        left = torch.tensor([side == "left" for side, _ in items], device=dev)
        xy = torch.where(left[:, None, None], xy * torch.tensor([-1.0, 1.0], device=dev), xy)  # left as right
        keypoints = normalize_keypoints(xy, torch.ones(xy.shape[:2], device=dev)).keypoints  # (H, 21, 3)
        tokens = None
        if self._crop_size is not None:  # MMHMR's image condition: the backbone's tokens of each hand crop
            crops = np.stack([h.crop for _, h in items])  # (H, 3, h, w)
            tokens = run_on_crops(self._backend, self._bundle, HAND_BACKBONE, crops, dev)["image_tokens"]
            for _, h in items:
                h.crop = None  # read; not kept in the result
        pred = predict_bodies(self._step, self._decoder, keypoints, self.iterations, image_tokens=tokens)
        fingers = rot6d_to_matrix(pred.body6d)  # (H, 15, 3, 3)
        size = pred.shape[:, 0].exp()  # (H,)
        with torch.no_grad():
            eye = torch.eye(3, device=dev).expand(len(items), 1, 3, 3)
            local = self._skeleton(torch.cat([eye, fingers], 1), size)  # (H, 21, 3) in the hand's own frame
            # The wrist's orientation from the 2D keypoints and the decoded finger pose (the transformer's
            # orientation head is far less precise than this fit: the pose is known, only a turn is left).
            orient = fit_rotation_to_keypoints(local, keypoints[..., :2])  # (H, 3, 3)
            points = local @ orient.transpose(1, 2)  # (H, 21, 3)
        mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], device=dev))
        fingers = torch.where(left[:, None, None, None], mirror @ fingers @ mirror, fingers).cpu().numpy()
        orient = torch.where(left[:, None, None], mirror @ orient @ mirror, orient).cpu().numpy()
        points = torch.where(left[:, None, None], points * torch.tensor([-1.0, 1.0, 1.0], device=dev), points)
        points, size = points.cpu().numpy().astype(np.float32), size.cpu().numpy()
        for k, (_, hand) in enumerate(items):
            hand.pose = HandPose(orient[k], fingers[k], points[k], float(size[k]))
