"""Deterministic test media written with PyAV: small clips, broken files, images, audio.

Every frame of `make_video` carries
  * a red block in the top-left corner and a green block in the bottom-left corner of the
    stored picture; together they identify any of the 8 rotations/mirrors (`marker_corners`);
  * its frame index as 8 black/white cells across the middle band (`read_frame_index`),
    so a test can tell which source frame a decoder picked.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ENCODERS = {  # codec name -> (FFmpeg encoder, pixel format, encoder options)
    "h264": ("libx264", "yuv420p", {"preset": "veryfast", "threads": "1"}),
    "hevc": ("libx265", "yuv420p", {"preset": "ultrafast", "x265-params": "log-level=none:pools=1"}),
    "vp8": ("libvpx", "yuv420p", {"threads": "1"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"threads": "1", "deadline": "realtime", "cpu-used": "8"}),
    "av1": ("libsvtav1", "yuv420p", {"preset": "12"}),
    "mpeg4": ("mpeg4", "yuv420p", {}),
    "mjpeg": ("mjpeg", "yuvj420p", {}),
    "png": ("png", "rgb24", {}),
    "ffv1": ("ffv1", "yuv420p", {}),
}

INDEX_BITS = 8
RED, GREEN = (230, 30, 30), (30, 200, 30)


def pattern(index: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: grey background, corner markers, frame index in binary."""
    img = np.full((height, width, 3), 110, np.uint8)
    bh, bw = height // 4, width // 4
    img[:bh, :bw] = RED  # top-left
    img[height - bh:, :bw] = GREEN  # bottom-left
    y0, y1 = height * 3 // 8, height * 5 // 8
    cell = width // INDEX_BITS
    for bit in range(INDEX_BITS):
        on = (index >> (INDEX_BITS - 1 - bit)) & 1
        img[y0:y1, bit * cell:(bit + 1) * cell] = 250 if on else 5
    return img


def read_frame_index(image: np.ndarray) -> int:
    """Inverse of the index band of `pattern` (upright, unrotated picture)."""
    height, width = image.shape[:2]
    y0, y1 = height * 3 // 8, height * 5 // 8
    cell = width // INDEX_BITS
    value = 0
    for bit in range(INDEX_BITS):
        patch = image[y0 + 2:y1 - 2, bit * cell + 2:(bit + 1) * cell - 2].astype(np.float32)
        value = (value << 1) | int(patch.mean() > 128)
    return value


def marker_corners(image: np.ndarray) -> tuple[str, str]:
    """Corners ("tl", "tr", "bl", "br") holding the red and the green marker."""
    height, width = image.shape[:2]
    qh, qw = max(1, height // 8), max(1, width // 8)
    corners = {
        "tl": image[:qh, :qw], "tr": image[:qh, width - qw:],
        "bl": image[height - qh:, :qw], "br": image[height - qh:, width - qw:],
    }
    means = {k: v.reshape(-1, 3).astype(np.float32).mean(0) for k, v in corners.items()}
    red = max(means, key=lambda k: means[k][0] - means[k][1])
    green = max(means, key=lambda k: means[k][1] - means[k][0])
    return red, green


def make_video(
    path: Path,
    frames: int = 30,
    size: tuple[int, int] = (128, 96),
    fps: float | Fraction = 30,
    codec: str = "h264",
    rotation: int | None = None,
    *,
    mirror: bool = False,
    times_s: Sequence[float] | None = None,
    faststart: bool = False,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Write a clip of `frames` pattern frames, `size` = (width, height) as stored.

    rotation: clockwise degrees a player turns the stored frames to show them (a portrait phone
    clip is stored landscape with rotation 90), written as the container's display matrix;
    mirror adds a left-right flip after it. times_s: presentation times (a variable frame rate
    clip); default i / fps. faststart: put the MP4 index (moov) before the media data.
    container_options: muxer options, e.g. {"live": "1"} for a WebM without duration or cues
    (what a browser's MediaRecorder uploads).
    """
    path = Path(path)
    encoder, pix_fmt, options = ENCODERS[codec]
    rate = Fraction(fps).limit_denominator(1001)
    width, height = size
    container_options = dict(container_options or {})
    if faststart:
        container_options["movflags"] = "+faststart"
    with av.open(str(path), "w", options=container_options) as out:
        stream = out.add_stream(encoder, rate=rate, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        time_base = Fraction(1, 90000) if times_s is not None else 1 / rate
        stream.codec_context.time_base = time_base
        if rotation is not None or mirror:
            # PyAV's angle is counter-clockwise (as VideoFrame.rotation reads it back).
            stream.set_display_rotation(-(rotation or 0), hflip=mirror)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24")
            frame = frame.reformat(format=pix_fmt) if pix_fmt != "rgb24" else frame
            frame.pts = round(times_s[i] / time_base) if times_s is not None else i
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def make_one_frame_video(path: Path, size: tuple[int, int] = (128, 96)) -> Path:
    """A valid H.264 MP4 holding exactly one frame (accepted by the probe)."""
    return make_video(path, frames=1, size=size)


def make_audio_only(path: Path, seconds: float = 1.0, rate: int = 44100) -> Path:
    """An AAC sine tone; the container follows the suffix (.m4a/.mp4 -> MP4)."""
    path = Path(path)
    n = int(seconds * rate)
    tone = (0.2 * np.sin(2 * np.pi * 440.0 * np.arange(n) / rate)).astype(np.float32)
    with av.open(str(path), "w", format="mp4" if path.suffix in (".mp4", ".m4a") else None) as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        step = 1024  # the AAC encoder's frame size
        for start in range(0, n - step + 1, step):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + step], format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _encode_image(codec: str, pix_fmt: str, size: tuple[int, int]) -> bytes:
    width, height = size
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(pattern(0, width, height), format="rgb24").reformat(format=pix_fmt)
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


def make_png(path: Path, size: tuple[int, int] = (128, 96)) -> Path:
    """A real PNG file (PyAV's PNG encoder), whatever the suffix of `path`."""
    Path(path).write_bytes(_encode_image("png", "rgb24", size))
    return Path(path)


def make_jpeg(path: Path, size: tuple[int, int] = (128, 96)) -> Path:
    """A real baseline JPEG (PyAV's MJPEG encoder writes one JFIF picture per frame)."""
    Path(path).write_bytes(_encode_image("mjpeg", "yuvj420p", size))
    return Path(path)


def make_random_bytes(path: Path, n: int = 20_000, seed: int = 0) -> Path:
    Path(path).write_bytes(np.random.default_rng(seed).bytes(n))
    return Path(path)


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    """Copy the first `fraction` of the bytes of `src` (an interrupted upload)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def mp4_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """Top-level ISO-BMFF boxes as (type, payload start, payload end)."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = len(data) - pos
        boxes.append((kind.decode("latin-1"), pos + header, min(pos + size, len(data))))
        if size < header:
            break
        pos += size
    return boxes


def corrupt_media_data(src: Path, dst: Path, start: float = 0.0, end: float = 1.0, seed: int = 0) -> Path:
    """Overwrite the fraction [start, end) of an MP4's `mdat` payload with random bytes, leaving
    the index intact: the file opens, but the packets in that range do not decode."""
    data = bytearray(Path(src).read_bytes())
    (_, lo, hi), = [b for b in mp4_boxes(bytes(data)) if b[0] == "mdat"]
    a, b = lo + int((hi - lo) * start), lo + int((hi - lo) * end)
    data[a:b] = np.random.default_rng(seed).bytes(b - a)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` and return it (for one-line fixtures)."""
    path.write_bytes(data)
    return path
