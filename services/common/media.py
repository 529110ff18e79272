"""Probe an uploaded file: is it a video this service can process, and what does it hold?

The gateway calls `probe` before queueing a job and the worker calls it again before decoding,
so this module imports only PyAV and numpy (never torch, onnxruntime or mediapipe).

Policy, in the order checks run:
  0-byte file                                   -> EmptyUpload
  FFmpeg cannot open it, or the demuxer is not
  on the allow-list (HLS playlists, concat lists
  and raw elementary streams are refused)       -> NotAVideo
  a still image (PNG/JPEG/... even if renamed
  .mp4; HEIF/AVIF photos; one still-image frame) -> NotAVideo
  no video stream (audio only; cover art is not
  a video stream)                               -> NoVideoStream
  codec without a decoder or off the allow-list -> UnsupportedCodec
  frame larger than max_side / max_pixels       -> ResolutionTooLarge
  longer than max_duration_s                    -> DurationTooLong
  no frame decodes within the first packets     -> NoDecodableFrames
A video container holding a single frame (a one-frame MP4) is accepted: it is a valid, if
short, clip. A truncated MP4 whose index (`moov`) was cut off cannot be opened (NotAVideo);
one whose index survived opens and is accepted when at least one frame decodes.

Orientation: phones store landscape frames plus a display matrix. FFmpeg attaches the matrix
to every decoded frame as side data (PyAV 18: `VideoFrame.rotation`, and the raw matrix in
`VideoFrame.side_data`); `Orientation.from_display_matrix` reproduces the ffmpeg CLI's
autorotate decisions (rotations by multiples of 90 degrees plus mirroring).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import av.error
import numpy as np

from kinemesh.services.common.errors import (
    DurationTooLong,
    EmptyUpload,
    NoDecodableFrames,
    NotAVideo,
    NoVideoStream,
    ResolutionTooLarge,
    TooFewFrames,
    UnsupportedCodec,
)

if TYPE_CHECKING:  # the gateway must not import the worker package at run time
    from kinemesh.services.worker.stages.base import ClipMeta

# Codecs phones, cameras, browsers and editors write (FFmpeg codec names, not decoder names:
# AV1 decodes through libdav1d but is named "av1").
ALLOWED_CODECS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mjpeg", "prores"}
)

# Demuxers FFmpeg may use at all (`format_whitelist`). Video containers; audio formats, so that
# an audio file gets the precise NoVideoStream; single-image demuxers, so that an image gets a
# precise NotAVideo. Left out on purpose: hls/dash/concat (they open other files or URLs: the
# classic "playlist inside an upload reads /etc/passwd" attack), image2 (reads numbered file
# sequences next to the upload), raw elementary streams (h264, hevc, m4v, obu: no timestamps).
VIDEO_DEMUXERS = ("mov", "matroska", "webm", "avi", "mpegts", "mpeg", "flv", "asf", "ivf")
AUDIO_DEMUXERS = ("mp3", "wav", "aac", "ogg", "flac")
IMAGE_DEMUXERS = frozenset({
    "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif", "gif_pipe", "apng",
    "jpegxl_pipe", "jpegls_pipe", "j2k_pipe", "psd_pipe", "qoi_pipe", "svg_pipe", "exr_pipe",
    "ppm_pipe", "pgm_pipe", "pbm_pipe", "pam_pipe", "dpx_pipe", "sgi_pipe", "hdr_pipe",
})
FORMAT_WHITELIST = ",".join((*VIDEO_DEMUXERS, *AUDIO_DEMUXERS, *sorted(IMAGE_DEMUXERS)))
# `file` only: a demuxer must never reach the network or another protocol.
OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": FORMAT_WHITELIST}

# ISO-BMFF brands of HEIF/AVIF photos and image sequences; the mov demuxer reads them.
IMAGE_BRANDS = frozenset(
    {"heic", "heix", "heim", "heis", "hevc", "hevx", "mif1", "msf1", "avif", "avis", "avci"}
)
STILL_IMAGE_CODECS = frozenset(
    {"png", "apng", "webp", "gif", "bmp", "tiff", "jpegxl", "jpeg2000", "jpegls", "qoi", "psd"}
)

# Probe decodes until its first frame but reads at most this many packets of the stream.
FIRST_FRAME_MAX_PACKETS = 256
# Frame rate assumed when the container states none and cannot be measured (one frame).
NOMINAL_FPS = 30.0

_DISPLAYMATRIX = av.sidedata.sidedata.Type.DISPLAYMATRIX


@dataclass(frozen=True)
class MediaLimits:
    """Upload limits a probe enforces (see `Settings`)."""

    max_duration_s: float  # longest accepted clip, seconds
    max_pixels: int  # largest accepted frame area, width x height
    max_side: int  # largest accepted frame side, pixels
    min_frames: int = 1  # fewest decodable frames a clip must have

    @classmethod
    def from_settings(cls, settings: Any) -> MediaLimits:
        return cls(settings.max_duration_s, settings.max_pixels, settings.max_side, settings.min_frames)

    def as_kwargs(self) -> dict[str, float | int]:
        return {"max_duration_s": self.max_duration_s, "max_pixels": self.max_pixels,
                "max_side": self.max_side, "min_frames": self.min_frames}


@dataclass(frozen=True)
class Orientation:
    """How to turn a stored frame upright: rotate clockwise, then mirror left-right."""

    rotation_deg: int = 0  # clockwise: 0, 90, 180, 270
    mirrored: bool = False  # horizontal flip after the rotation

    @classmethod
    def from_display_matrix(cls, matrix: np.ndarray | None) -> Orientation:
        """Decode FFmpeg's 3x3 display matrix (9 int32, 16.16 fixed point; last column 2.30).

        Mirrors fftools' autorotate: theta = -av_display_rotation_get(), then transpose /
        flip filters chosen from the matrix signs. Angles off a multiple of 90 degrees (FFmpeg
        would use the `rotate` filter) are snapped to the nearest one.
        """
        if matrix is None:
            return cls()
        m = np.asarray(matrix, dtype=np.float64).reshape(9) / 65536.0
        s0, s1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
        if s0 == 0.0 or s1 == 0.0:
            return cls()
        ccw = math.degrees(math.atan2(m[1] / s1, m[0] / s0))  # = -av_display_rotation_get
        theta = (round(ccw) % 360 + 360) % 360  # clockwise display rotation, [0, 360)
        quarter = int(round(theta / 90.0)) % 4
        if quarter == 1:  # "transpose=clock", or "cclock_flip" (a plain transpose)
            return cls(90, bool(m[3] > 0))
        if quarter == 3:  # "transpose=cclock", or "clock_flip" (an anti-transpose)
            return cls(270, bool(m[3] < 0))
        if quarter == 2:  # hflip and/or vflip
            hflip, vflip = bool(m[0] < 0), bool(m[4] < 0)
            if hflip and vflip:
                return cls(180, False)
            if vflip:
                return cls(180, True)
            return cls(0, hflip)
        return cls(180, True) if m[4] < 0 else cls()  # ~0 degrees: only a vflip is possible

    def upright_size(self, width: int, height: int) -> tuple[int, int]:
        return (height, width) if self.rotation_deg in (90, 270) else (width, height)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) stored -> upright (a view; np.rot90 with k<0 turns clockwise)."""
        if self.rotation_deg:
            image = np.rot90(image, k=-(self.rotation_deg // 90))
        if self.mirrored:
            image = image[:, ::-1]
        return image

    @classmethod
    def of_frame(cls, frame: av.VideoFrame) -> Orientation:
        sd = frame.side_data.get(_DISPLAYMATRIX)
        if sd is None:
            return cls()
        return cls.from_display_matrix(np.frombuffer(bytes(sd), dtype=np.int32)[:9])


@dataclass(frozen=True)
class ProbeResult:
    """What a probe found; sizes are upright (after the display matrix)."""

    width: int  # upright width in pixels
    height: int  # upright height in pixels
    stored_width: int  # width of the frames as coded
    stored_height: int
    rotation_deg: int  # clockwise rotation that makes stored frames upright: 0/90/180/270
    mirrored: bool  # a left-right flip follows the rotation (rare: some front cameras)
    source_fps: float  # average frame rate of the stream
    duration_s: float
    source_frames: int  # frame count the container reports, or an estimate
    codec: str  # FFmpeg codec name, e.g. "h264"
    container: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    stream_index: int  # the video stream decode must read
    pix_fmt: str | None
    has_audio: bool

    @property
    def orientation(self) -> Orientation:
        return Orientation(self.rotation_deg, self.mirrored)

    def clip_meta(self, target_fps: float | None = None) -> ClipMeta:
        """The pipeline's ClipMeta; target_fps is capped at the source rate (never upsample)."""
        from kinemesh.services.worker.stages.base import ClipMeta  # worker-side type

        fps = self.source_fps if target_fps is None else min(float(target_fps), self.source_fps)
        return ClipMeta(
            width=self.width, height=self.height, rotation_deg=self.rotation_deg,
            source_fps=self.source_fps, target_fps=fps, duration_s=self.duration_s,
            source_frames=self.source_frames, codec=self.codec, container=self.container,
        )


def open_container(path: Path) -> av.container.InputContainer:
    """Open with the demuxer and protocol allow-lists; any FFmpeg failure is NotAVideo."""
    try:
        return av.open(str(path), mode="r", options=dict(OPEN_OPTIONS))
    except av.error.FFmpegError as exc:
        # InvalidDataError: unparseable or truncated (e.g. "moov atom not found");
        # ArgumentError: the detected demuxer is not on the allow-list.
        raise NotAVideo("The file is not a readable video container.") from exc


def select_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The main video stream: cover art (attached pictures) does not count."""
    candidates = [
        s for s in container.streams.video
        if not s.disposition & (av.stream.Disposition.attached_pic
                                | av.stream.Disposition.timed_thumbnails)
    ]
    if not candidates:
        kinds = sorted({s.type for s in container.streams})
        raise NoVideoStream(
            "The file has no video stream" + (f" (it holds: {', '.join(kinds)})." if kinds else "."),
            streams=kinds,
        )
    # Prefer the default track, then the largest picture.
    return max(candidates, key=lambda s: (bool(s.disposition & av.stream.Disposition.default),
                                          (s.codec_context.width if s.codec_context else 0)
                                          * (s.codec_context.height if s.codec_context else 0),
                                          -s.index))


def check_resolution(width: int, height: int, *, max_pixels: int, max_side: int) -> None:
    if max(width, height) > max_side or width * height > max_pixels:
        raise ResolutionTooLarge(
            f"The video is {width}x{height}; the limit is {max_side} pixels a side and "
            f"{max_pixels} pixels in all.",
            width=width, height=height, max_side=max_side, max_pixels=max_pixels,
        )


def decoded_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream,
    *, max_packets: int | None = None,
) -> Iterator[av.VideoFrame]:
    """Decode `stream` in presentation order, skipping packets the decoder rejects.

    A demuxing error (a cut-off or corrupt container) ends the stream as if at EOF; the
    decoder is then flushed so frames it still holds come out.
    """
    packets = 0
    demux = container.demux(stream)
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            break
        except av.error.FFmpegError:
            break
        if packet.size == 0:  # the demuxer's end-of-stream marker; flushed below
            continue
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError:
            frames = []
        yield from frames
        packets += 1
        if max_packets is not None and packets >= max_packets:
            return
    try:
        frames = stream.decode(None)
    except av.error.FFmpegError:
        frames = []
    yield from frames


def _to_float(value: Fraction | None) -> float | None:
    if value is None or value <= 0:
        return None
    return float(value)


def _scan_timing(path: Path, stream_index: int) -> tuple[int, float | None]:
    """Count packets and measure their pts span without decoding, for files that state no
    duration (e.g. browser MediaRecorder WebM). Returns (packets, seconds or None)."""
    count, lo, hi = 0, None, None
    with open_container(path) as container:
        stream = container.streams[stream_index]
        tb = stream.time_base
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                count += 1
                if packet.pts is not None and tb is not None:
                    end = packet.pts + (packet.duration or 0)
                    lo = packet.pts if lo is None else min(lo, packet.pts)
                    hi = end if hi is None else max(hi, end)
        except av.error.FFmpegError:
            pass  # a damaged tail: keep what was read
    span = float((hi - lo) * tb) if lo is not None and hi is not None and hi > lo else None
    return count, span


def probe(path: Path, *, max_duration_s: float, max_pixels: int, max_side: int,
          min_frames: int = 1) -> ProbeResult:
    """Validate `path` as a processable video and describe it; raises a typed MediaError."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise EmptyUpload("The uploaded file is empty (0 bytes).")
    with open_container(path) as container:
        demuxer = container.format.name
        if set(demuxer.split(",")) & IMAGE_DEMUXERS:
            raise NotAVideo("The file is a still image, not a video.", demuxer=demuxer)
        brand = (container.metadata.get("major_brand") or "").strip().lower()
        if brand in IMAGE_BRANDS:
            raise NotAVideo("The file is a HEIF/AVIF image, not a video.", brand=brand)

        stream = select_video_stream(container)
        ctx = stream.codec_context
        codec = stream.codec_context.codec.canonical_name if ctx is not None else None
        if codec in STILL_IMAGE_CODECS and (stream.frames or 0) <= 1:
            raise NotAVideo("The file holds a single still image, not a video.", codec=codec)
        if ctx is None or codec not in ALLOWED_CODECS:
            raise UnsupportedCodec(
                f"The video codec {codec or 'unknown'!s} is not supported; use one of "
                f"{', '.join(sorted(ALLOWED_CODECS))}.",
                codec=codec, supported=sorted(ALLOWED_CODECS),
            )
        stored_w, stored_h = ctx.width, ctx.height
        if stored_w and stored_h:  # before decoding anything: refuse decompression bombs early
            check_resolution(stored_w, stored_h, max_pixels=max_pixels, max_side=max_side)

        fps = _to_float(stream.average_rate) or _to_float(stream.guessed_rate)
        frames = int(stream.frames or 0)
        duration = None
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None and container.duration > 0:
            duration = container.duration / av.time_base
        if duration is None or (fps is None and frames > 1):
            frames, duration = _scan_timing(path, stream.index)
            if fps is None and duration and frames > 1:
                fps = frames / duration
        fps = fps or NOMINAL_FPS
        if duration is None:
            duration = max(frames, 1) / fps
        if frames <= 0:
            frames = max(1, round(duration * fps))
        if duration > max_duration_s:
            raise DurationTooLong(
                f"The video lasts {duration:.1f} s; the limit is {max_duration_s:g} s.",
                duration_s=round(duration, 3), max_duration_s=max_duration_s,
            )

        # One thread: frame threading would hold back the first frame for several packets.
        ctx.thread_type = "SLICE"
        decoded = iter(decoded_frames(container, stream, max_packets=FIRST_FRAME_MAX_PACKETS + min_frames))
        first = next(decoded, None)
        if first is None:
            raise NoDecodableFrames("No frame of the video could be decoded; the file may be "
                                    "damaged or cut off.")
        if min_frames > 1:
            count = 1 + sum(1 for _, _ in zip(range(min_frames - 1), decoded, strict=False))
            if count < min_frames:
                raise TooFewFrames(
                    f"The video has {count} decodable frame(s); at least {min_frames} are needed "
                    "to follow motion.", frames=count, min_frames=min_frames)
        if (first.width, first.height) != (stored_w, stored_h):  # the header lied or was empty
            stored_w, stored_h = first.width, first.height
            check_resolution(stored_w, stored_h, max_pixels=max_pixels, max_side=max_side)
        orientation = Orientation.of_frame(first)
        width, height = orientation.upright_size(stored_w, stored_h)
        return ProbeResult(
            width=width, height=height, stored_width=stored_w, stored_height=stored_h,
            rotation_deg=orientation.rotation_deg, mirrored=orientation.mirrored,
            source_fps=fps, duration_s=duration, source_frames=frames, codec=codec,
            container=demuxer, stream_index=stream.index,
            pix_fmt=ctx.pix_fmt, has_audio=bool(container.streams.audio),
        )
