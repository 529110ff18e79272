"""Decode throughput: frames per second the DecodeStage delivers (upright RGB batches)."""

from __future__ import annotations

import time
from pathlib import Path

from kinemesh.services.common.media import MediaLimits
from kinemesh.services.worker.stages.decode import DecodeStage

_NO_LIMITS = MediaLimits(max_duration_s=float("inf"), max_pixels=1 << 40, max_side=1 << 20)


def decode_fps(path: Path, target_fps: float | None = None, *, batch_frames: int = 16,
               threads: int = 0, repeats: int = 1) -> float:
    """Sampled frames per second of wall time, probe included, best of `repeats` runs.

    target_fps None decodes at the source rate (every frame converted to RGB).
    """
    stage = DecodeStage(batch_frames=batch_frames, threads=threads)
    best = 0.0
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        video = stage.open(Path(path), target_fps, limits=_NO_LIMITS)
        frames = sum(len(batch.indices) for batch in video.batches())
        best = max(best, frames / (time.perf_counter() - start))
    return best
