"""probe(): each kind of bad upload maps to its typed error; good clips report upright metadata."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kinemesh.services.common import errors
from kinemesh.services.common.media import ALLOWED_CODECS, MediaLimits, Orientation, probe
from tests import media

LIMITS = MediaLimits(max_duration_s=600.0, max_pixels=3840 * 2160, max_side=4096)


def run_probe(path: Path, limits: MediaLimits = LIMITS):
    return probe(path, **limits.as_kwargs())


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """30 frames, 128x96 stored, 30 fps, H.264 in MP4 (index at the end, the default)."""
    return media.make_video(tmp_path_factory.mktemp("probe") / "clip.mp4", frames=30)


def test_good_h264_clip_metadata(clip):
    info = run_probe(clip)
    assert (info.width, info.height) == (128, 96)
    assert (info.stored_width, info.stored_height) == (128, 96)
    assert info.rotation_deg == 0 and info.mirrored is False
    assert info.source_fps == pytest.approx(30.0)
    assert info.source_frames == 30
    assert info.duration_s == pytest.approx(1.0, abs=1e-3)
    assert info.codec == "h264"
    assert "mp4" in info.container.split(",")
    assert info.has_audio is False
    meta = info.clip_meta(60.0)  # never upsampled
    assert meta.target_fps == pytest.approx(30.0) and meta.width == 128 and meta.height == 96


@pytest.mark.parametrize(("codec", "suffix"), [
    ("hevc", ".mp4"), ("vp9", ".webm"), ("vp8", ".webm"), ("mpeg4", ".avi"), ("mjpeg", ".avi"),
])
def test_other_allowed_codecs(tmp_path, codec, suffix):
    info = run_probe(media.make_video(tmp_path / f"c{suffix}", frames=6, codec=codec))
    assert info.codec == codec and info.codec in ALLOWED_CODECS
    assert (info.width, info.height, info.source_frames) == (128, 96, 6)


def test_webm_without_duration_is_measured(tmp_path):
    """Browser MediaRecorder WebM states no duration: the probe measures the packets."""
    path = media.make_video(tmp_path / "live.webm", frames=45, codec="vp9", container_options={"live": "1"})
    info = run_probe(path)
    assert (info.duration_s, info.source_frames, info.source_fps) == (pytest.approx(1.5), 45, 30.0)
    with pytest.raises(errors.DurationTooLong):
        run_probe(path, MediaLimits(max_duration_s=1.0, max_pixels=LIMITS.max_pixels, max_side=4096))


def test_one_frame_mp4_is_a_valid_container(tmp_path):
    info = run_probe(media.make_one_frame_video(tmp_path / "one.mp4"))
    assert info.source_frames == 1 and info.codec == "h264"


def test_min_frames_refuses_a_one_frame_clip(tmp_path):
    """The service default (KINEMESH_MIN_FRAMES=2): one frame shows no motion."""
    limits = MediaLimits(max_duration_s=600.0, max_pixels=LIMITS.max_pixels, max_side=4096, min_frames=2)
    with pytest.raises(errors.TooFewFrames) as exc:
        run_probe(media.make_one_frame_video(tmp_path / "one.mp4"), limits)
    assert exc.value.extra == {"frames": 1, "min_frames": 2}
    assert run_probe(media.make_video(tmp_path / "two.mp4", frames=2), limits).source_frames == 2


# (rotation, mirror) as a player shows it -> upright size of a 128x96 stored clip
@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("mirror", [False, True])
def test_rotation_reports_upright_size(tmp_path, rotation, mirror):
    path = media.make_video(tmp_path / "r.mp4", frames=3, rotation=rotation, mirror=mirror)
    info = run_probe(path)
    assert (info.rotation_deg, info.mirrored) == (rotation, mirror)
    assert (info.width, info.height) == ((96, 128) if rotation in (90, 270) else (128, 96))
    assert (info.stored_width, info.stored_height) == (128, 96)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _hls_playlist(path: Path) -> Path:
    # The classic SSRF / local-file-read upload: a playlist that FFmpeg would follow.
    return _write(path, b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")


def _concat_list(path: Path) -> Path:
    return _write(path, b"ffconcat version 1.0\nfile '/etc/passwd'\n")


def _faststart_cut_after_index(path: Path, src: Path) -> Path:
    data = src.read_bytes()
    (moov_end,) = [end for kind, _, end in media.mp4_boxes(data) if kind == "moov"]
    path.write_bytes(data[: moov_end + 64])  # the index survives, the media data does not
    return path


BAD_INPUTS = {
    "empty": (lambda d, c: _write(d / "e.mp4", b""), errors.EmptyUpload),
    "random_bytes": (lambda d, c: media.make_random_bytes(d / "r.mp4", 20_000), errors.NotAVideo),
    "text": (lambda d, c: _write(d / "t.mp4", b"hello\n" * 500), errors.NotAVideo),
    "png_renamed_mp4": (lambda d, c: media.make_png(d / "p.mp4"), errors.NotAVideo),
    "jpeg_renamed_mp4": (lambda d, c: media.make_jpeg(d / "j.mp4"), errors.NotAVideo),
    "hls_playlist": (lambda d, c: _hls_playlist(d / "h.mp4"), errors.NotAVideo),
    "concat_list": (lambda d, c: _concat_list(d / "c.mp4"), errors.NotAVideo),
    "truncated_60pct_moov_lost": (lambda d, c: media.truncate(c, d / "t60.mp4", 0.6), errors.NotAVideo),
    "audio_only": (lambda d, c: media.make_audio_only(d / "a.m4a"), errors.NoVideoStream),
    "ffv1_codec": (lambda d, c: media.make_video(d / "f.mkv", 3, codec="ffv1"), errors.UnsupportedCodec),
    "png_codec_in_mov": (lambda d, c: media.make_video(d / "p.mov", 3, codec="png"), errors.UnsupportedCodec),
    "media_data_all_corrupt": (lambda d, c: media.corrupt_media_data(c, d / "x.mp4"), errors.NoDecodableFrames),
    "faststart_cut_after_index": (
        lambda d, c: _faststart_cut_after_index(d / "fc.mp4", media.make_video(d / "fs.mp4", 30, faststart=True)),
        errors.NoDecodableFrames,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_maps_to_typed_error(tmp_path, clip, case):
    make, expected = BAD_INPUTS[case]
    path = make(tmp_path, clip)
    with pytest.raises(expected) as info:
        run_probe(path)
    assert type(info.value) is expected  # the precise class, not just a MediaError
    assert isinstance(info.value, errors.MediaError) and info.value.http_status == 422


def test_duration_limit(clip):
    with pytest.raises(errors.DurationTooLong) as info:
        run_probe(clip, MediaLimits(max_duration_s=0.5, max_pixels=LIMITS.max_pixels, max_side=4096))
    assert info.value.extra["duration_s"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("limits", [
    MediaLimits(max_duration_s=600, max_pixels=10**9, max_side=127),  # a side too long
    MediaLimits(max_duration_s=600, max_pixels=128 * 96 - 1, max_side=4096),  # too many pixels
])
def test_resolution_limit(clip, limits):
    with pytest.raises(errors.ResolutionTooLarge):
        run_probe(clip, limits)


def test_damaged_middle_still_probes(tmp_path, clip):
    """Corrupt packets in the middle do not reject the clip: its first frames decode."""
    info = run_probe(media.corrupt_media_data(clip, tmp_path / "m.mp4", 0.4, 0.6))
    assert info.source_frames == 30


@pytest.mark.parametrize(("matrix", "expected"), [
    (None, Orientation(0, False)),
    ([65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30], Orientation(0, False)),
    ([0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30], Orientation(90, False)),  # old "rotate=90" tag
    ([-65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30], Orientation(180, False)),
    ([0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30], Orientation(270, False)),
    ([-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30], Orientation(0, True)),  # hflip
    ([65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30], Orientation(180, True)),  # vflip
    ([0, 0, 0, 0, 0, 0, 0, 0, 0], Orientation(0, False)),  # degenerate: ignored
])
def test_orientation_from_display_matrix(matrix, expected):
    assert Orientation.from_display_matrix(matrix) == expected


def test_media_module_stays_light():
    """The gateway imports media.py: no ML runtime and no worker package may come with it."""
    code = (
        "import sys, kinemesh.services.common.media\n"
        "heavy = {'torch', 'onnxruntime', 'mediapipe', 'cv2', 'kinemesh.services.worker'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
