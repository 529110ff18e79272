"""Body stage: keypoint tracks -> body parameters (GenHMR or MQ-HMR) -> 2D-informed refinement -> mesh.

Per track, the frames where the person was seen are normalised to the person box, then either
(GenHMR, the default) decoded by the exported masked transformer and token decoder, or (MQ-HMR)
cropped from the frames (aspect-preserving 256 x 192 around the person box, normalised as the bundle
says) and run through the exported MQ-HMR graph, both through the worker's inference backend (ONNX
Runtime in process, or Triton); then refined in PyTorch over the whole track (GenHMR's token embeddings or
MQ-HMR's joint query tokens, root orientation, camera, one shape). A body model whose graphs carry
untrained weights is refused with `model_untrained` before any work. Outputs are in the camera frame of a pinhole camera with an
assumed focal length of max(width, height) pixels: x right, y up, z towards the viewer (the
camera looks down -z), metres.

Device: the graphs' inputs and outputs, the decoding loop and the refinement are torch tensors on
the stage's `device` (`KINEMESH_DEVICE`). On a GPU with ONNX Runtime's CUDA provider, graphs run
through IO binding on those tensors (`run_tensors`), so nothing crosses to the host between the
graphs and the refinement; the finished track comes back to the host once.

Shape legend: T frames of a track, L = 33 landmarks, J = 24 joints, N nodes, V vertices,
S shape coefficients.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kinemesh.models.backends import InferenceBackend, OrtBackend
from kinemesh.models.body.assets import load_body_model
from kinemesh.models.camera import (
    box_intrinsics,
    mediapipe_world_to_model,
    normalize_keypoints,
    weak_perspective,
)
from kinemesh.models.export.bundle import Bundle, BundleError, open_bundle
from kinemesh.models.genhmr.decoding import BackendStepFn
from kinemesh.models.genhmr.inference import BackendDecoder, BodyParams, full_rotations, predict_track
from kinemesh.models.genhmr.refine import RefineConfig, refine_track
from kinemesh.models.mqhmr.model import MQHMR_OUTPUTS, MQHMROutput, PoseHead
from kinemesh.models.mqhmr.refine import MQHMR_REFINE, refine_queries
from kinemesh.services.common.bundle_check import (
    BODY_MODEL_GRAPHS,
    IMAGE_BACKBONE,
    check_body_model,
    image_conditioned,
)
from kinemesh.services.common.errors import InvalidRequest, ModelUnavailable
from kinemesh.services.worker.artifacts_glb import animated_mesh_glb
from kinemesh.services.worker.stages.base import (
    ClipMeta,
    DecodedVideo,
    KeypointTracks,
    NullContext,
    PoseObservation,
    StageContext,
    TrackedFrame,
)
from kinemesh.services.worker.stages.crops import CHUNK, box_crops, run_on_crops

STAGE = "body"
CPU_STEP_BATCH = 32  # on a CPU the step graph runs in calls of this many frames (see BackendStepFn), unless
# the bundle was tuned on this device (`kinemesh bundle tune`); so do the crop graphs (`crops.CHUNK`)
REFINE_WINDOW = 600  # frames refined together; longer tracks are refined window by window
NPZ_VERTEX_FRAMES = 150  # posed vertices go into the NPZ for tracks up to this many frames (5 s at 30 fps);
# every track gets its node transforms, from which any frame's vertices follow (see `_artifacts`)


@dataclass
class TrackBodies:
    """One track's bodies, frame by frame (only frames where the person was seen)."""

    track_id: int
    frame_index: np.ndarray  # (T,) sampled-frame indices
    timestamps_s: np.ndarray  # (T,)
    rotations: np.ndarray  # (T, J, 3, 3) root (camera frame) then the body joints, SMPL order
    shape: np.ndarray  # (S,) one shape for the track
    camera: np.ndarray  # (T, 3) weak perspective (s, tx, ty) in person-box units
    translation: np.ndarray  # (T, 3) metres, camera frame
    joints: np.ndarray  # (T, J, 3) metres, camera frame
    reproj_before_px: np.ndarray  # (T,)
    reproj_after_px: np.ndarray  # (T,)
    bbox_height_px: np.ndarray  # (T,)


@dataclass
class BodyResult:
    tracks: list[TrackBodies]
    focal_px: float
    artifacts: dict[str, bytes]


class BodyStage:
    """Loads a bundle once (graphs into the backend, tokenizer and body model into PyTorch). It serves
    every body model whose graphs the bundle holds with trained weights (`servable`); at least one."""

    name = STAGE

    def __init__(self, bundle_dir: Path | str, refine: RefineConfig | None = None, iterations: int | None = None,
                 backend: InferenceBackend | None = None, threads: int = 0, decode_rate_hz: float = 15.0,
                 device: str | torch.device = "cpu") -> None:
        try:
            self.bundle: Bundle = open_bundle(bundle_dir)
        except BundleError as exc:
            raise ModelUnavailable(f"body bundle: {exc}") from exc
        m = self.bundle.manifest
        refused: dict[str, str] = {}
        for body_model in BODY_MODEL_GRAPHS:
            try:
                check_body_model(m, body_model, str(self.bundle.root))
            except ModelUnavailable as exc:
                refused[body_model] = exc.detail
        self.servable = [b for b in BODY_MODEL_GRAPHS if b not in refused]
        if not self.servable:
            raise ModelUnavailable(f"bundle {self.bundle.root} serves no body model: {'; '.join(refused.values())}")
        self.refine_config = refine or RefineConfig()
        # With refinement on, tokens are decoded for keyframes at about this rate and the frames
        # between start from the nearest keyframe (see `predict_track`); without it, every frame.
        self.decode_rate_hz = decode_rate_hz
        self.iterations = iterations or m.get("decoding", {}).get("iterations", 5)
        self.backend = backend or OrtBackend(intra_op_threads=threads)
        if "genhmr" in self.servable:
            for graph in ("genhmr_step", "tokenizer_decode"):
                self.backend.load(graph, self.bundle.graph_path(graph))
            step_cfg = m["graphs"]["genhmr_step"]["config"]
            on_gpu = getattr(self.backend, "device", None) == "cuda"  # in process on a GPU: one call per chunk
            step_batch = self.bundle.batch_for("genhmr_step", self.backend, None if on_gpu else CPU_STEP_BATCH)
            self.step_fn = BackendStepFn(self.backend, "genhmr_step", step_cfg["num_tokens"],
                                         step_cfg["codebook_size"], max_batch=step_batch)
            self.decoder_fn = BackendDecoder(self.backend, "tokenizer_decode")
            self.tokenizer = self.bundle.load_tokenizer()
            if image_conditioned(m):  # the step cross-attends to the ViT's tokens of each person crop
                self.backend.load(IMAGE_BACKBONE, self.bundle.graph_path(IMAGE_BACKBONE))
        self.layer = load_body_model(self.bundle.path(m["body_model"]["file"]),
                                     num_shape=m["body_model"]["shape_components"])
        self.device = torch.device(device)
        # The refinement's copy of the body layer lives on the device; `layer` (host) serves the mesh
        # artifacts and the kinematics stage, which run on the CPU.
        self.refine_layer = self.layer if self.device.type == "cpu" else copy.deepcopy(self.layer).to(self.device)
        if "genhmr" in self.servable:
            self.tokenizer.to(self.device)
        eye = torch.eye(3, device=self.device).expand(1, 24, 3, 3)
        self.refine_layer.skeleton(eye, torch.zeros(1, self.layer.config.num_shape, device=self.device),
                                   torch.zeros(1, 3, device=self.device))  # build the skeleton bases now
        self._lock = threading.Lock()  # PyTorch refinement: one job at a time per stage
        self._mqhmr: PoseHead | None = None  # loaded on the first MQ-HMR job (`require`)

    def require(self, body_model: str) -> None:
        """Fail with a typed error, before any work, unless this bundle can serve `body_model`
        (ModelUntrained names the checkpoint an untrained graph needs); load what it needs."""
        if body_model not in BODY_MODEL_GRAPHS:
            raise InvalidRequest(f"unknown body_model {body_model!r}; known: {sorted(BODY_MODEL_GRAPHS)}")
        check_body_model(self.bundle.manifest, body_model, str(self.bundle.root))
        if body_model == "mq-hmr" and self._mqhmr is None:
            self.backend.load("mqhmr", self.bundle.graph_path("mqhmr"))
            entry = self.bundle.manifest["torch"]["mqhmr_pose_head"]
            head = PoseHead(int(entry["dim"]))
            head.load_state_dict(torch.load(self.bundle.path(entry["file"]), weights_only=True))
            self._mqhmr = head.eval().requires_grad_(False).to(self.device)

    def warm_up(self, frames: int = 32) -> None:
        """Run the whole stage once on a synthetic track: the first call of ONNX Runtime, the
        autograd graph and the mesh writers costs ~2 s that no job should pay (keypoint-only GenHMR;
        the models that read person crops have no frames here and warm up on their first job)."""
        if "genhmr" in self.servable and not image_conditioned(self.bundle.manifest):
            self.run(self.rest_pose_track(frames), NullContext())

    def rest_pose_track(self, frames: int) -> KeypointTracks:
        """A still person in the body model's rest pose, projected into an 800 x 800 frame."""
        eye = torch.eye(3).expand(1, self.layer.config.num_joints, 3, 3)
        with torch.no_grad():
            _, lm = self.layer.skeleton(eye, torch.zeros(1, self.layer.config.num_shape), torch.zeros(1, 3))
        xy = (weak_perspective(lm, torch.tensor([[300.0, 0.0, 0.0]]))[0] + 400.0).numpy()  # (L, 2) pixels
        ones = np.ones(len(xy), np.float32)
        obs = PoseObservation(landmarks_2d=xy.astype(np.float32), visibility=ones, presence=ones,
                              world=np.zeros((len(xy), 3), np.float32),
                              bbox=np.array([*xy.min(0), *xy.max(0)], np.float32), score=1.0)
        meta = ClipMeta(width=800, height=800, rotation_deg=0, source_fps=30.0, target_fps=30.0,
                        duration_s=frames / 30, source_frames=frames, codec="h264", container="mp4")
        return KeypointTracks(meta, [TrackedFrame(i, i / 30, [(0, obs)]) for i in range(frames)])

    @property
    def body_model_name(self) -> str:
        return str(self.bundle.manifest["body_model"]["id"])

    def run(self, tracks: KeypointTracks, ctx: StageContext, meshes: bool = True, body_model: str = "genhmr",
            video: DecodedVideo | None = None) -> BodyResult:
        """Bodies for every track. MQ-HMR (`body_model="mq-hmr"`) reads the person crops from `video`,
        the clip the tracks came from (decoded again, frame by frame)."""
        self.require(body_model)
        meta = tracks.meta
        focal = float(max(meta.width, meta.height))
        per_track: dict[int, list[tuple[int, float, object]]] = {}
        for f in tracks.frames:
            for tid, obs in f.people:
                per_track.setdefault(tid, []).append((f.index, f.timestamp_s, obs))
        crops: dict[int, np.ndarray] = {}  # image-conditioned GenHMR: each track's crops
        queries: dict[int, dict[str, torch.Tensor]] = {}  # MQ-HMR: each track's graph outputs
        mq = body_model == "mq-hmr"
        if mq or image_conditioned(self.bundle.manifest):
            if video is None:
                raise ValueError(f"body_model={body_model!r} on this bundle reads person crops: pass the decoded video")
            if mq:
                queries = self._crop_outputs(video, per_track, "mqhmr")
            else:
                crops = self._crops(video, per_track, IMAGE_BACKBONE)
        total = sum(len(v) for v in per_track.values()) or 1
        done = 0
        out: list[TrackBodies] = []
        for tid, rows in sorted(per_track.items()):
            ctx.check_cancelled()
            body = self._track(tid, rows, meta.width, meta.height, focal, meta.target_fps, body_model, crops.get(tid),
                               queries.get(tid))
            out.append(body)
            done += len(rows)
            ctx.progress(STAGE, done / total)
        artifacts = self._artifacts(out, focal) if meshes and out else {}
        return BodyResult(out, focal, artifacts)

    def decode_stride(self, fps: float) -> int:
        """Frames per decoded keyframe: 1 without refinement (every frame is decoded), else the
        track's frame rate over `decode_rate_hz`, rounded (2 at 30 fps, 4 at 60 fps)."""
        if self.refine_config.steps == 0 or self.decode_rate_hz <= 0 or fps <= 0:
            return 1
        return max(1, round(fps / self.decode_rate_hz))

    def _cut(self, video: DecodedVideo, per_track: dict[int, list],
             size: tuple[int, int]) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
        """Per decoded frame with tracked people: their (track, row) keys and person crops (P, 3, h, w)
        uint8: the clip decoded once more, each person's box (`person_box`) cut out of its frame."""
        wanted: dict[int, list[tuple[int, int, object]]] = {}  # frame index -> (track, row, observation)
        for tid, rows in per_track.items():
            for k, (index, _, obs) in enumerate(rows):
                wanted.setdefault(int(index), []).append((tid, k, obs))
        for batch in video.batches():
            for j, index in enumerate(batch.indices):
                people = wanted.get(int(index), [])
                if not people:
                    continue
                xy = np.stack([o.landmarks_2d for _, _, o in people])
                conf = np.stack([o.visibility for _, _, o in people])
                yield [(tid, k) for tid, k, _ in people], box_crops(batch.images[j], xy, conf, size)

    def _crop_size(self, graph: str) -> tuple[int, int]:
        return tuple(self.bundle.manifest["graphs"][graph]["preprocessing"]["crop"])

    def _crops(self, video: DecodedVideo, per_track: dict[int, list], graph: str) -> dict[int, np.ndarray]:
        """Each track's person crops (T, 3, h, w) uint8 at `graph`'s crop size, row by row as the track
        has them (image-conditioned GenHMR reads its keyframes' crops while it decodes)."""
        size = self._crop_size(graph)
        out = {tid: np.zeros((len(rows), 3, *size), np.uint8) for tid, rows in per_track.items()}
        for keys, crops in self._cut(video, per_track, size):
            for (tid, k), c in zip(keys, crops, strict=True):
                out[tid][k] = c
        return out

    def _crop_outputs(self, video: DecodedVideo, per_track: dict[int, list], graph: str) -> dict[int, dict]:
        """`graph`'s outputs (each (T, ...), on the stage's device) for each track's rows, the graph run as
        crops accumulate, CHUNK at a time: only the outputs are kept (MQ-HMR's are ~13 KB a frame, its
        crops 147 KB), so a long clip's crops never all sit in memory."""
        keys: list[tuple[int, int]] = []
        pending: list[np.ndarray] = []
        out: dict[int, dict[str, torch.Tensor]] = {}

        def flush() -> None:
            res = run_on_crops(self.backend, self.bundle, graph, np.concatenate(pending), self.device)
            tids = torch.tensor([t for t, _ in keys])
            rows = torch.tensor([k for _, k in keys])
            for tid in tids.unique().tolist():
                mine = (tids == tid).nonzero().flatten()  # (n,) positions in this chunk
                track = out.setdefault(tid, {})
                for name, value in res.items():
                    if name not in track:
                        track[name] = value.new_zeros((len(per_track[tid]), *value.shape[1:]))
                    track[name][rows[mine].to(value.device)] = value[mine.to(value.device)]
            keys.clear()
            pending.clear()

        size = self._crop_size(graph)
        for frame_keys, crops in self._cut(video, per_track, size):
            keys.extend(frame_keys)
            pending.append(crops)
            if len(keys) >= CHUNK:
                flush()
        if keys:
            flush()
        for tid, rows in per_track.items():  # a track none of whose frames came back from the decoder
            if tid not in out:
                keys.extend((tid, k) for k in range(len(rows)))
                pending.append(np.zeros((len(rows), 3, *size), np.uint8))
                flush()
        return out

    def _track(self, tid: int, rows: list, width: int, height: int, focal: float, fps: float,
               body_model: str = "genhmr", crops: np.ndarray | None = None,
               mq_out: dict[str, torch.Tensor] | None = None) -> TrackBodies:
        obs = [r[2] for r in rows]
        dev = self.device
        xy = torch.from_numpy(np.stack([o.landmarks_2d for o in obs]).astype(np.float32)).to(dev)  # (T, L, 2)
        conf = torch.from_numpy(np.stack([o.visibility for o in obs]).astype(np.float32)).to(dev)  # (T, L)
        world = mediapipe_world_to_model(
            torch.from_numpy(np.stack([o.world for o in obs]).astype(np.float32)).to(dev))  # (T, L, 3)
        norm = normalize_keypoints(xy, conf)
        frame_index = torch.tensor([r[0] for r in rows], dtype=torch.int64)  # (T,) gaps where the person was unseen
        mq = body_model == "mq-hmr"
        if mq:
            queries = MQHMROutput(*(mq_out[name] for name in MQHMR_OUTPUTS))
        else:
            def image_tokens(keys: torch.Tensor) -> torch.Tensor:  # keyframes' crops through the backbone
                return run_on_crops(self.backend, self.bundle, IMAGE_BACKBONE, crops[keys.cpu().numpy()],
                                    self.device)["image_tokens"]

            init = predict_track(self.step_fn, self.decoder_fn, norm.keypoints, self.iterations,
                                 stride=self.decode_stride(fps), chunk=CHUNK, frame_index=frame_index,
                                 image_tokens=None if crops is None else image_tokens)
        # pinhole camera: focal = the frame's longer side (about a 53 degree field of view), centred
        intr = box_intrinsics(focal, torch.tensor([width / 2, height / 2], device=dev), norm.center,
                              norm.half)  # (T, 3)
        refined, placed, before, after = [], [], [], []
        with self._lock:
            for i in range(0, len(obs), REFINE_WINDOW):
                sl = slice(i, i + REFINE_WINDOW)
                if not mq:
                    res = refine_track(self.refine_layer, self.tokenizer.decoder, self.tokenizer.codebook.detach(),
                                       BodyParams(*(t[sl] for t in init)), norm.keypoints[sl], world[sl],
                                       self.refine_config, intrinsics=intr[sl], frame_index=frame_index[sl])
                else:
                    config = dataclasses.replace(MQHMR_REFINE, steps=self.refine_config.steps)
                    res = refine_queries(self.refine_layer, self._mqhmr, MQHMROutput(*(t[sl] for t in queries)),
                                         norm.keypoints[sl], world[sl], config, intr[sl], frame_index[sl])
                refined.append(res.params)
                placed.append(res.translation)
                before.append(res.reproj_before)
                after.append(res.reproj_after)
        p = BodyParams(*(torch.cat(t) for t in zip(*refined, strict=True)))
        shape = p.shape.mean(0)  # windows share a shape within themselves; average across windows
        rot = full_rotations(p.body6d, p.orient6d)  # (T, J, 3, 3)
        with torch.no_grad():
            joints, _ = self.refine_layer.skeleton(rot, shape.expand(len(obs), -1), torch.zeros(len(obs), 3, device=dev))
        if all(t is not None for t in placed):  # refined in perspective: the solved placement
            transl = torch.cat(placed)  # (T, 3)
        else:  # unrefined: place the weak-perspective camera at the depth its scale implies
            s, tx, ty = p.camera[:, 0].clamp_min(1e-3), p.camera[:, 1], p.camera[:, 2]
            px_per_m = s * norm.half  # (T,) pixels per metre at the person's depth
            transl = torch.stack([
                tx + (norm.center[:, 0] - width / 2) / px_per_m,
                -ty - (norm.center[:, 1] - height / 2) / px_per_m,
                -focal / px_per_m,
            ], -1)  # (T, 3)
        def host(t: torch.Tensor) -> np.ndarray:  # the track's one trip back from the device
            return t.detach().cpu().numpy()

        half = host(norm.half)
        bboxes = np.stack([o.bbox for o in obs])
        return TrackBodies(
            track_id=tid, frame_index=np.array([r[0] for r in rows], np.int64),
            timestamps_s=np.array([r[1] for r in rows], np.float64),
            rotations=host(rot).astype(np.float32), shape=host(shape).astype(np.float32),
            camera=host(p.camera).astype(np.float32), translation=host(transl).astype(np.float32),
            joints=host(joints + transl[:, None]).astype(np.float32),
            reproj_before_px=host(torch.cat(before)) * half, reproj_after_px=host(torch.cat(after)) * half,
            bbox_height_px=(bboxes[:, 3] - bboxes[:, 1]).astype(np.float32),
        )

    def _artifacts(self, tracks: list[TrackBodies], focal: float) -> dict[str, bytes]:
        layer = self.layer
        faces = layer.faces.numpy()
        parents = layer.config.node_parents
        # Per track the NPZ holds the skinning of the mesh: vertex v at frame t is
        #   sum_n skin_weights[v, n] * (node_rotations[t, n] @ (rest_vertices[v] - rest_heads[n]) + node_heads[t, n])
        # (camera frame, metres), and for short tracks the posed vertices themselves (float16).
        arrays: dict[str, np.ndarray] = {"faces": faces.astype(np.int32), "focal_length_px": np.float32(focal),
                                         "joint_names": np.asarray(layer.config.joint_names),
                                         "skin_weights": layer.skin_weights.numpy()}
        out: dict[str, bytes] = {}
        for tb in tracks:
            T = len(tb.frame_index)
            shape = torch.from_numpy(tb.shape)[None]
            with torch.no_grad():
                v_rest, heads = layer.shaped(shape)  # (1, V, 3), (1, N, 3)
                g, w = layer.node_transforms(torch.from_numpy(tb.rotations), heads.expand(T, -1, -1))
            w = w + torch.from_numpy(tb.translation)[:, None]  # (T, N, 3) posed heads in the camera frame
            times = tb.timestamps_s - tb.timestamps_s[0]
            if T > 1 and not (np.diff(times) > 0).all():
                times = np.arange(T) / 30.0
            out[f"mesh_track{tb.track_id}.glb"] = animated_mesh_glb(
                v_rest[0].numpy(), faces, layer.skin_weights.numpy(), parents, heads[0].numpy(), g.numpy(),
                w.numpy(), times, name=f"kinemesh track {tb.track_id}")
            key = f"track{tb.track_id}_"
            arrays.update({key + "frame_index": tb.frame_index, key + "timestamps_s": tb.timestamps_s,
                           key + "rotations": tb.rotations, key + "shape": tb.shape, key + "camera": tb.camera,
                           key + "translation": tb.translation, key + "joints": tb.joints,
                           key + "rest_vertices": v_rest[0].numpy(), key + "rest_heads": heads[0].numpy(),
                           key + "node_rotations": g.numpy(), key + "node_heads": w.numpy()})
            if T <= NPZ_VERTEX_FRAMES:
                with torch.no_grad():
                    verts = layer(torch.from_numpy(tb.rotations), shape.expand(T, -1),
                                  torch.from_numpy(tb.translation)).vertices
                arrays[key + "vertices"] = verts.numpy().astype(np.float16)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        out["mesh.npz"] = buf.getvalue()
        return out
