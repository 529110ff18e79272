"""The pipeline: the list of stages one job runs, the same in a Celery task and in the CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from kinemesh.models.backends import BackendUnavailable, InferenceBackend, OrtBackend, TritonBackend
from kinemesh.models.backends.ort import ProviderUnavailable, choose_providers
from kinemesh.models.genhmr.refine import RefineConfig
from kinemesh.services.common.bundle_check import graphs_for
from kinemesh.services.common.errors import InferenceUnavailable, ModelUnavailable
from kinemesh.services.common.schemas import BodyModelInfo, ClipInfo, JobOptions, KinemeshResult, StageTiming
from kinemesh.services.common.settings import Settings
from kinemesh.services.worker.results import build_result, keypoints_npz
from kinemesh.services.worker.stages.base import StageContext
from kinemesh.services.worker.stages.body import BodyStage
from kinemesh.services.worker.stages.decode import DecodeStage
from kinemesh.services.worker.stages.hands import HandStage
from kinemesh.services.worker.stages.keypoints import KeypointStage
from kinemesh.services.worker.stages.kinematics import KinematicsStage

# Share of the whole job each stage accounts for, for the progress bar.
STAGE_SPAN = {"decode": (0.0, 0.05), "keypoints": (0.05, 0.7), "body": (0.7, 0.88), "kinematics": (0.88, 0.97),
              "results": (0.97, 1.0)}


@dataclass
class PipelineOutput:
    result: KinemeshResult
    artifacts: dict[str, bytes]  # artifact name -> content


class _OverallProgress:
    """Maps a stage's own progress onto the job's [0, 1] using STAGE_SPAN."""

    def __init__(self, inner: StageContext) -> None:
        self.inner = inner

    def progress(self, stage: str, fraction: float) -> None:
        lo, hi = STAGE_SPAN.get(stage, (0.0, 1.0))
        self.inner.progress(stage, lo + (hi - lo) * min(max(fraction, 0.0), 1.0))

    def check_cancelled(self) -> None:
        self.inner.check_cancelled()


class Pipeline:
    def __init__(self, settings: Settings, decode: DecodeStage | None = None) -> None:
        self.settings = settings
        self.decode = decode or DecodeStage(batch_frames=settings.batch_frames, threads=settings.decode_threads)
        # The landmarker's pose count is fixed when it is created: one stage per max_people asked for.
        self._keypoints: dict[int, KeypointStage] = {}
        self._body: BodyStage | None = None
        self._kinematics: KinematicsStage | None = None
        self._hands: HandStage | None = None

    def keypoint_stage(self, max_people: int) -> KeypointStage:
        stage = self._keypoints.get(max_people)
        if stage is None:
            stage = KeypointStage(self.settings.model_dir, max_people=max_people)
            self._keypoints[max_people] = stage
        return stage

    def device(self) -> str:
        """`KINEMESH_DEVICE` resolved once for both halves of the work: `auto` is cuda only when PyTorch sees
        a GPU and onnxruntime has its CUDA provider (onnxruntime-gpu lists the provider even on a machine
        without a GPU), else cpu; `cuda` is taken as asked and fails typed where it cannot run."""
        s = self.settings
        if s.device != "auto":
            return s.device
        gpu = torch.cuda.is_available() and choose_providers("auto")[0] == "CUDAExecutionProvider"
        return "cuda" if gpu or (torch.cuda.is_available() and s.inference_backend == "triton") else "cpu"

    def backend(self) -> InferenceBackend:
        """The inference backend the settings choose: in-process ONNX Runtime, or a Triton server."""
        s = self.settings
        if s.inference_backend == "triton":
            return TritonBackend(s.triton_url)
        return OrtBackend(device=self.device(), intra_op_threads=s.inference_threads, device_id=s.cuda_device)

    def torch_device(self) -> torch.device:
        """The device of the body and hand stages' tensors (`device`)."""
        if self.device() == "cpu":
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ModelUnavailable("KINEMESH_DEVICE=cuda but this PyTorch build sees no CUDA device")
        return torch.device("cuda", self.settings.cuda_device)

    def body_stage(self) -> BodyStage:
        if self._body is None:
            try:
                self._body = BodyStage(self.settings.bundle_dir, RefineConfig(steps=self.settings.refine_steps),
                                       backend=self.backend(), decode_rate_hz=self.settings.decode_rate_hz,
                                       device=self.torch_device())
            except BackendUnavailable as exc:
                raise InferenceUnavailable(str(exc)) from exc
            except ProviderUnavailable as exc:
                raise ModelUnavailable(str(exc)) from exc
        return self._body

    def hand_stage(self) -> HandStage:
        if self._hands is None:
            body = self.body_stage()  # the bundle and backend the hand pose graphs run on
            self._hands = HandStage(self.settings.model_dir, bundle=body.bundle, backend=body.backend,
                                    device=body.device)
        return self._hands

    def kinematics_stage(self) -> KinematicsStage:
        if self._kinematics is None:
            body = self.body_stage()
            self._kinematics = KinematicsStage(self.settings.model_dir, body.layer, body.bundle, body.backend,
                                               fit_iterations=self.settings.neurik_fit_iterations)
        return self._kinematics

    @staticmethod
    def body_model_info(stage: BodyStage, focal_px: float, body_model: str = "genhmr") -> BodyModelInfo:
        m = stage.bundle.manifest
        graphs = [m["graphs"][g] for g in graphs_for(m, body_model)]
        return BodyModelInfo(
            name=stage.body_model_name, pose_model=graphs[0]["architecture"],
            bundle=f"{m['name']}@{m['version']}", trained=all(g["trained"] for g in graphs),
            joint_names=list(m["joint_names"]), shape_components=int(m["body_model"]["shape_components"]),
            focal_length_px=focal_px, decoding_iterations=stage.iterations, refinement_steps=stage.refine_config.steps)

    def close(self) -> None:
        """Release the models (the landmarker's native graph must close before interpreter exit)."""
        for stage in self._keypoints.values():
            stage.close()
        self._keypoints.clear()
        if self._hands is not None:
            self._hands.close()
            self._hands = None

    def warm_up(self) -> None:
        """Load the default models now rather than on the first job."""
        self.keypoint_stage(JobOptions().max_people)
        self.body_stage().warm_up()
        self.kinematics_stage()

    def run(self, video_path: Path, options: JobOptions, ctx: StageContext, job_id: str | None = None,
            size_bytes: int | None = None) -> PipelineOutput:
        try:
            return self._run(video_path, options, ctx, job_id, size_bytes)
        except BackendUnavailable as exc:  # a Triton server down or failing: transient, the job retries
            raise InferenceUnavailable(str(exc)) from exc

    def _run(self, video_path: Path, options: JobOptions, ctx: StageContext, job_id: str | None,
             size_bytes: int | None) -> PipelineOutput:
        ctx = _OverallProgress(ctx)
        started = time.perf_counter()
        timings: list[StageTiming] = []

        @contextmanager
        def timed(stage: str) -> Iterator[None]:
            ctx.progress(stage, 0.0)
            t0 = time.perf_counter()
            yield
            timings.append(StageTiming(stage=stage, seconds=round(time.perf_counter() - t0, 4)))
            ctx.progress(stage, 1.0)

        target_fps = options.target_fps or self.settings.default_target_fps
        if "body" in options.outputs:  # a body model the bundle cannot serve fails the job before any work
            self.body_stage().require(options.body_model)
        with timed("decode"):
            video = self.decode.open(video_path, target_fps, limits=self.settings)
        with timed("keypoints"):  # decoding streams inside this stage, batch by batch
            tracks = self.keypoint_stage(options.max_people).run(video, ctx)
        body, body_model, kinematics, artifacts = None, None, None, {}
        if "body" in options.outputs:
            stage = self.body_stage()
            with timed("body"):
                body = stage.run(tracks, ctx, body_model=options.body_model, video=video)
            body_model = self.body_model_info(stage, body.focal_px, options.body_model)
            artifacts.update(body.artifacts)
        hands = None
        if "hands" in options.outputs:
            with timed("hands"):
                hands = self.hand_stage().run(video, tracks, ctx)
        if "kinematics" in options.outputs and body is not None:
            with timed("kinematics"):
                kinematics = self.kinematics_stage().run(body, video.meta.target_fps, ctx, ik=options.ik)
            artifacts.update(kinematics.artifacts)
        with timed("results"):
            m = video.meta
            clip = ClipInfo(width=m.width, height=m.height, rotation_deg=m.rotation_deg,
                            source_fps=round(m.source_fps, 4), target_fps=round(m.target_fps, 4),
                            duration_s=round(m.duration_s, 4), source_frames=m.source_frames, codec=m.codec,
                            container=m.container, size_bytes=size_bytes)
            artifacts["keypoints.npz"] = keypoints_npz(tracks)
            result = build_result(tracks, options, clip, timings, 0.0, job_id, body, body_model, artifacts, kinematics,
                                  hands)
        # timings and the total are final only once the results stage itself is timed
        result.timings = timings
        result.summary.seconds = round(time.perf_counter() - started, 4)
        return PipelineOutput(result=result, artifacts=artifacts)
