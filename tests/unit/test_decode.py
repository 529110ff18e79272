"""DecodeStage: resampling by timestamps, batch shapes, rotation, damaged input, a real clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kinemesh.services.common import errors
from kinemesh.services.common.media import MediaLimits, probe
from kinemesh.services.worker.stages.base import FrameBatch
from kinemesh.services.worker.stages.decode import DecodeStage
from tests import media

LIMITS = MediaLimits(max_duration_s=600.0, max_pixels=3840 * 2160, max_side=4096)


def decode_all(path, target_fps, batch_frames=16, limits=LIMITS):
    video = DecodeStage(batch_frames=batch_frames, threads=0).open(path, target_fps, limits=limits)
    batches = list(video.batches())
    return video.meta, batches


def concat(batches: list[FrameBatch]):
    return (np.concatenate([b.indices for b in batches]),
            np.concatenate([b.timestamps_s for b in batches]),
            np.concatenate([b.images for b in batches]))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode")
    return {
        "60fps": media.make_video(d / "c60.mp4", frames=60, fps=60),
        "30fps": media.make_video(d / "c30.mp4", frames=30, fps=30),
    }


def test_60_to_30_fps_halves_frames(clips):
    meta, batches = decode_all(clips["60fps"], 30.0)
    idx, ts, imgs = concat(batches)
    assert meta.source_fps == pytest.approx(60) and meta.target_fps == pytest.approx(30)
    assert len(idx) == 30
    np.testing.assert_array_equal(idx, np.arange(30))
    np.testing.assert_allclose(ts, np.arange(30) * 2 / 60, atol=1e-4)
    assert [media.read_frame_index(im) for im in imgs] == list(range(0, 60, 2))


def test_target_above_source_keeps_source_rate(clips):
    meta, batches = decode_all(clips["30fps"], 60.0)
    idx, ts, imgs = concat(batches)
    assert meta.target_fps == pytest.approx(30)
    assert len(idx) == 30 == meta.source_frames
    assert [media.read_frame_index(im) for im in imgs] == list(range(30))
    np.testing.assert_allclose(ts, np.arange(30) / 30, atol=1e-4)


def test_none_means_source_rate(clips):
    meta, batches = decode_all(clips["60fps"], None)
    assert meta.target_fps == pytest.approx(60)
    assert sum(len(b.indices) for b in batches) == 60


def test_non_integer_ratio_picks_nearest_frame(clips):
    meta, batches = decode_all(clips["60fps"], 25.0)
    idx, ts, imgs = concat(batches)
    assert len(idx) == 25  # one second of video
    picked = np.array([media.read_frame_index(im) for im in imgs])
    np.testing.assert_allclose(picked / 60, ts, atol=1e-4)  # timestamps name the frame shown
    assert np.all(np.abs(ts - idx / 25) <= 0.5 / 60 + 1e-6)  # nearest to k / 25
    assert np.all(np.diff(picked) > 0)


def test_batches_have_the_right_shapes(clips):
    meta, batches = decode_all(clips["30fps"], 30.0, batch_frames=8)
    assert [len(b.indices) for b in batches] == [8, 8, 8, 6]
    for b in batches:
        n = len(b.indices)
        assert b.images.shape == (n, meta.height, meta.width, 3) == (n, 96, 128, 3)
        assert b.images.dtype == np.uint8 and b.indices.dtype == np.int64
        assert b.timestamps_s.dtype == np.float64 and b.timestamps_s.shape == (n,)
    idx, _, _ = concat(batches)
    np.testing.assert_array_equal(idx, np.arange(30))


def test_batches_can_be_iterated_again(clips):
    video = DecodeStage(batch_frames=16).open(clips["30fps"], 30.0, limits=LIMITS)
    first = concat(list(video.batches()))[2]
    second = concat(list(video.batches()))[2]
    np.testing.assert_array_equal(first, second)


# Stored picture: red marker top-left, green bottom-left. Where a player shows them:
SHOWN_CORNERS = {
    (0, False): ("tl", "bl"), (90, False): ("tr", "tl"),
    (180, False): ("br", "tr"), (270, False): ("bl", "br"),
    (0, True): ("tr", "br"), (90, True): ("tl", "tr"),
    (180, True): ("bl", "tl"), (270, True): ("br", "bl"),
}


@pytest.mark.parametrize(("rotation", "mirror"), sorted(SHOWN_CORNERS))
def test_rotation_is_applied(tmp_path, rotation, mirror):
    path = media.make_video(tmp_path / "r.mp4", frames=4, rotation=rotation, mirror=mirror)
    meta, batches = decode_all(path, None)
    _, _, imgs = concat(batches)
    assert meta.rotation_deg == rotation
    expected_hw = (128, 96) if rotation in (90, 270) else (96, 128)
    assert imgs.shape == (4, *expected_hw, 3)
    assert (meta.height, meta.width) == expected_hw
    for im in imgs:
        assert media.marker_corners(im) == SHOWN_CORNERS[(rotation, mirror)]


def test_portrait_phone_clip_comes_out_upright(tmp_path):
    """A phone held upright stores 1280x720-like landscape frames plus "rotate 90"."""
    path = media.make_video(tmp_path / "phone.mp4", frames=3, size=(160, 96), rotation=90)
    meta, batches = decode_all(path, None)
    assert (meta.width, meta.height) == (96, 160)
    assert batches[0].images.shape[1:] == (160, 96, 3)  # taller than wide


def test_variable_frame_rate_gap_picks_nearest(tmp_path):
    times = [i / 30 for i in range(30) if not 10 <= i <= 13]  # frames 10-13 dropped
    path = media.make_video(tmp_path / "vfr.mp4", frames=len(times), times_s=times)
    meta, batches = decode_all(path, 10.0)
    idx, ts, imgs = concat(batches)
    picked = [media.read_frame_index(im) for im in imgs]  # index among the written frames
    source = [round(times[p] * 30) for p in picked]  # ... as a 30 fps frame number
    # k / 10 s -> nearest kept frame; 0.4 s is nearer frame 14 (0.467 s) than frame 9 (0.3 s)
    assert source == [0, 3, 6, 9, 14, 15, 18, 21, 24, 27]
    np.testing.assert_allclose(ts, np.array(source) / 30, atol=1e-4)
    assert meta.target_fps == pytest.approx(10.0)


def test_corrupt_frames_are_skipped_not_fatal(tmp_path, clips):
    """Undecodable packets are skipped; the gap repeats the nearest good frame, and the
    repeated timestamps show it."""
    path = media.corrupt_media_data(clips["30fps"], tmp_path / "m.mp4", 0.4, 0.6)
    _, batches = decode_all(path, None)
    idx, ts, _ = concat(batches)
    np.testing.assert_array_equal(idx, np.arange(len(idx)))
    assert 1 <= len(np.unique(ts)) < 30 and np.all(np.diff(ts) >= 0)


def test_truncated_faststart_decodes_what_is_there(tmp_path):
    """An upload cut off after the index: the frames whose bytes arrived decode."""
    full = media.make_video(tmp_path / "fs.mp4", frames=60, faststart=True)
    data = full.read_bytes()
    (start, end), = [(a, b) for kind, a, b in media.mp4_boxes(data) if kind == "mdat"]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: start + int(0.6 * (end - start))])
    meta, batches = decode_all(cut, None)
    n = sum(len(b.indices) for b in batches)
    assert meta.source_frames == 60 and 1 <= n < 60


def test_limits_may_be_the_settings_object(clips):
    from kinemesh.services.common.settings import Settings

    video = DecodeStage().open(clips["30fps"], 15.0, limits=Settings())
    assert video.meta.target_fps == pytest.approx(15.0)
    assert sum(len(b.indices) for b in video.batches()) == 15


def test_probe_errors_surface_from_open(tmp_path):
    with pytest.raises(errors.NotAVideo):
        DecodeStage().open(media.make_png(tmp_path / "p.mp4"), 30.0, limits=LIMITS)


def test_duration_limit_enforced_while_decoding(clips):
    """A container may understate its duration; decoding stops at the limit regardless."""
    stage = DecodeStage(batch_frames=4)
    video = stage.open(clips["30fps"], 30.0, limits=LIMITS)
    info = probe(clips["30fps"], **LIMITS.as_kwargs())
    tight = MediaLimits(max_duration_s=0.5, max_pixels=LIMITS.max_pixels, max_side=LIMITS.max_side)
    with pytest.raises(errors.DurationTooLong):
        list(stage._batches(clips["30fps"], info, video.meta.target_fps, tight))


@pytest.mark.slow
def test_real_pose2sim_cam01_decodes_every_reported_frame():
    from kinemesh.models.assets.pose2sim_clips import DEFAULT_CACHE, ensure_demo_clips

    # The repo's shared cache (var/, git-ignored): the wheel is fetched once, not per run.
    cache = Path(__file__).resolve().parents[2] / DEFAULT_CACHE
    path = ensure_demo_clips(cache, keys=("single_cam01",))["single_cam01"]
    meta, batches = decode_all(path, None)
    idx, ts, _ = concat(batches)
    assert (meta.width, meta.height) == (1080, 1920) and meta.rotation_deg == 0
    assert meta.source_fps == pytest.approx(60)
    assert len(idx) == meta.source_frames
    assert batches[0].images.shape[1:] == (1920, 1080, 3)
    np.testing.assert_allclose(ts, np.arange(len(idx)) / 60, atol=1e-3)
