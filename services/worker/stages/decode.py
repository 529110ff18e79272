"""Decode stage: a video file in, upright RGB frame batches at the target frame rate out.

Shape legend: B frames in a batch, H/W upright image height/width.

The clip is probed first (the same checks as the gateway's upload validation), then decoded
lazily: each call of `DecodedVideo.batches()` opens the file and streams it once, so at most
one batch and one look-ahead frame are held. Resampling picks, for each time k / target_fps,
the decoded frame whose presentation time is nearest; the target rate never exceeds the
source rate, so no frame is invented. A gap in the stream (dropped or undecodable frames)
repeats the nearest frame; its repeated timestamp shows it. Only picked frames are converted
to RGB.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from kinemesh.services.common.errors import DurationTooLong, NoDecodableFrames
from kinemesh.services.common.media import (
    MediaLimits,
    ProbeResult,
    decoded_frames,
    open_container,
    probe,
)
from kinemesh.services.worker.stages.base import DecodedVideo, FrameBatch


class DecodeStage:
    """Opens clips for decoding; holds only configuration, so one instance serves all jobs."""

    name = "decode"

    def __init__(self, batch_frames: int = 16, threads: int = 0) -> None:
        if batch_frames < 1:
            raise ValueError("batch_frames must be >= 1")
        self.batch_frames = batch_frames
        self.threads = threads  # 0: FFmpeg picks a thread count

    def open(self, path: Path, target_fps: float | None, *, limits: MediaLimits) -> DecodedVideo:
        """Probe `path` (raising a typed MediaError) and return a lazily decoded video.

        target_fps: sampling rate asked for; None or anything above the source rate means
        the source rate. limits: a MediaLimits, or anything with its three fields (Settings).
        """
        if not isinstance(limits, MediaLimits):
            limits = MediaLimits.from_settings(limits)
        if target_fps is not None and not target_fps > 0:
            raise ValueError(f"target_fps must be positive, got {target_fps}")
        info = probe(Path(path), **limits.as_kwargs())
        meta = info.clip_meta(target_fps)
        return DecodedVideo(
            meta=meta,
            batches=lambda: self._batches(Path(path), info, meta.target_fps, limits),
        )

    # --- internals -------------------------------------------------------------------------

    def _timed_frames(self, path: Path, info: ProbeResult,
                      limits: MediaLimits) -> Iterator[tuple[float, av.VideoFrame]]:
        """(seconds since stream start, frame) in presentation order, times strictly rising."""
        with open_container(path) as container:
            stream = container.streams[info.stream_index]
            stream.codec_context.thread_type = "AUTO"  # frame + slice threads
            stream.codec_context.thread_count = self.threads
            tb = stream.time_base
            origin = float(stream.start_time * tb) if stream.start_time is not None and tb else None
            step = 1.0 / info.source_fps
            # The container may understate the duration; enforce the limit on what decodes.
            too_late = limits.max_duration_s + step
            last = None
            for frame in decoded_frames(container, stream):
                if frame.pts is not None and tb is not None:
                    t = float(frame.pts * tb)
                    if origin is None:
                        origin = t
                    t -= origin
                else:  # no timestamp (some damaged streams): assume the nominal spacing
                    t = 0.0 if last is None else last + step
                if last is not None and t <= last:
                    continue  # duplicate or backwards timestamp: keep the first
                if t > too_late:
                    raise DurationTooLong(
                        f"The video runs past the {limits.max_duration_s:g} s limit.",
                        max_duration_s=limits.max_duration_s,
                    )
                last = t
                yield t, frame

    def _sampled(self, frames: Iterator[tuple[float, av.VideoFrame]], fps: float,
                 source_fps: float) -> Iterator[tuple[int, float, av.VideoFrame]]:
        """(sampled index k, frame time, frame): for each k / fps the nearest frame in time.

        The timeline ends at the last frame's time plus half a source frame interval, so a
        clip of N frames at a rate divided by r yields about N / r samples.
        """
        k = 0
        prev: tuple[float, av.VideoFrame] | None = None
        for t, frame in frames:
            while k / fps <= t:
                target = k / fps
                if prev is not None and target - prev[0] <= t - target:
                    yield k, prev[0], prev[1]
                else:
                    yield k, t, frame
                k += 1
            prev = (t, frame)
        if prev is None:
            return
        while k / fps < prev[0] + 0.5 / source_fps:
            yield k, prev[0], prev[1]
            k += 1

    def _batches(self, path: Path, info: ProbeResult, fps: float,
                 limits: MediaLimits) -> Iterator[FrameBatch]:
        orientation = info.orientation
        stored = (info.stored_width, info.stored_height)
        out_h, out_w = info.height, info.width
        b = self.batch_frames
        images = np.empty((b, out_h, out_w, 3), np.uint8)
        indices = np.empty(b, np.int64)
        times = np.empty(b, np.float64)
        n = 0
        emitted = 0
        converted: tuple[av.VideoFrame, np.ndarray] | None = None  # reused when a frame repeats
        for k, t, frame in self._sampled(self._timed_frames(path, info, limits), fps, info.source_fps):
            if converted is not None and converted[0] is frame:
                upright = converted[1]
            else:
                if (frame.width, frame.height) == stored:
                    rgb = frame.to_ndarray(format="rgb24")  # (h, w, 3) as stored
                else:  # the stream changed size midway: keep the probed size
                    rgb = frame.to_ndarray(format="rgb24", width=stored[0], height=stored[1])
                upright = orientation.apply(rgb)  # (H, W, 3)
                converted = (frame, upright)
            images[n], indices[n], times[n] = upright, k, t
            n += 1
            if n == b:
                yield FrameBatch(indices=indices.copy(), timestamps_s=times.copy(), images=images)
                emitted += n
                images = np.empty((b, out_h, out_w, 3), np.uint8)  # the consumer may keep the last
                n = 0
        if n:
            yield FrameBatch(indices=indices[:n].copy(), timestamps_s=times[:n].copy(),
                             images=images[:n])
            emitted += n
        if emitted == 0:
            raise NoDecodableFrames("No frame of the video could be decoded.")
