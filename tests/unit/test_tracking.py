"""Tracker invariants on synthetic trajectories (no model, no video)."""

from __future__ import annotations

import numpy as np
import pytest

from kinemesh.services.worker.stages.base import NUM_LANDMARKS, PoseObservation
from kinemesh.services.worker.tracking import Tracker, box_iou, keypoint_distance

RNG = np.random.default_rng(7)
# A rough standing skeleton in a unit box (x in [0, 0.4], y in [0, 1]); each person gets
# their own perturbed copy so poses differ as real people's do.
_TEMPLATE = np.column_stack([RNG.uniform(0.0, 0.4, NUM_LANDMARKS), np.linspace(0.0, 1.0, NUM_LANDMARKS)])


def make_person(seed: int, height: float = 300.0) -> np.ndarray:
    """(L, 2) landmarks of one synthetic person, top-left at the origin."""
    jitter = np.random.default_rng(seed).normal(0.0, 0.04, (NUM_LANDMARKS, 2))
    return (_TEMPLATE + jitter) * height


def observe(shape: np.ndarray, x: float, y: float, noise: float = 1.0, seed: int = 0) -> PoseObservation:
    kp = shape + np.array([x, y]) + np.random.default_rng(seed).normal(0, noise, shape.shape)
    vis = np.ones(NUM_LANDMARKS, np.float32)
    bbox = np.array([*kp.min(0), *kp.max(0)], np.float32)
    return PoseObservation(
        landmarks_2d=kp.astype(np.float32), visibility=vis, presence=vis,
        world=np.zeros((NUM_LANDMARKS, 3), np.float32), bbox=bbox, score=1.0,
    )


def test_box_iou_and_distance_basics():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])
    kp = np.zeros((1, 3, 2))
    d = keypoint_distance(kp, np.ones((1, 3)), kp + [3.0, 4.0], np.ones((1, 3)), np.full((1, 1), 10.0))
    np.testing.assert_allclose(d, [[0.5]])


def test_single_person_keeps_one_id():
    tracker = Tracker(max_gap_frames=5)
    shape = make_person(1)
    ids = [tracker.update([observe(shape, 100 + 4 * f, 50, seed=f)])[0] for f in range(60)]
    assert set(ids) == {0}


def test_two_people_crossing_keep_ids():
    """A walks right, B walks left, their boxes overlap almost fully mid-way."""
    tracker = Tracker(max_gap_frames=5)
    a_shape, b_shape = make_person(1), make_person(2, height=320.0)
    frames = 60
    history: dict[str, list[int]] = {"a": [], "b": []}
    for f in range(frames):
        xa = 100 + 8 * f  # crosses xb near f = 30
        xb = 580 - 8 * f
        obs = [observe(a_shape, xa, 40, seed=2 * f), observe(b_shape, xb, 30, seed=2 * f + 1)]
        order = [1, 0] if f % 2 else [0, 1]  # detector order must not matter
        ids = tracker.update([obs[i] for i in order])
        by_person = dict(zip(order, ids, strict=True))
        history["a"].append(by_person[0])
        history["b"].append(by_person[1])
    assert len(set(history["a"])) == 1 and len(set(history["b"])) == 1
    assert history["a"][0] != history["b"][0]


def test_crossing_with_occlusion_at_the_crossing():
    """At the crossing only the front person is detected for a few frames."""
    tracker = Tracker(max_gap_frames=8)
    a_shape, b_shape = make_person(3), make_person(4, height=280.0)
    a_ids, b_ids = [], []
    for f in range(50):
        xa, xb = 100 + 10 * f, 600 - 10 * f  # cross near f = 25
        obs_a, obs_b = observe(a_shape, xa, 40, seed=f), observe(b_shape, xb, 60, seed=100 + f)
        if 23 <= f <= 27:  # B hidden behind A
            a_ids.append(tracker.update([obs_a])[0])
        else:
            ids = tracker.update([obs_b, obs_a])
            b_ids.append(ids[0])
            a_ids.append(ids[1])
    assert len(set(a_ids)) == 1
    assert len(set(b_ids)) == 1
    assert a_ids[0] != b_ids[0]


def test_crossing_lookalikes_follow_their_motion():
    """Same pose and size, so only the motion tells them apart when they overlap."""
    tracker = Tracker(max_gap_frames=5)
    shape = make_person(8)
    a_ids, b_ids = [], []
    for f in range(41):
        xa, xb = 100 + 10 * f, 500 - 10 * f  # same place at f = 20
        ids = tracker.update([observe(shape, xb, 50, seed=2 * f), observe(shape, xa, 50, seed=2 * f + 1)])
        if f != 20:  # at f = 20 the two are the same observation; either id is right
            b_ids.append(ids[0])
            a_ids.append(ids[1])
    assert len(set(a_ids)) == 1 and len(set(b_ids)) == 1 and a_ids[0] != b_ids[0]


@pytest.mark.parametrize("gap", [1, 3, 5])
def test_short_gap_keeps_id(gap: int):
    tracker = Tracker(max_gap_frames=5)
    shape = make_person(5)
    ids = []
    for f in range(30):
        if 10 <= f < 10 + gap:
            assert tracker.update([]) == []
            continue
        ids.append(tracker.update([observe(shape, 200 + 3 * f, 100, seed=f)])[0])
    assert set(ids) == {0}


def test_gap_longer_than_max_gives_new_id():
    tracker = Tracker(max_gap_frames=5)
    shape = make_person(6)
    before = [tracker.update([observe(shape, 200, 100, seed=f)])[0] for f in range(10)]
    for _ in range(6):  # one frame more than the tracker may coast
        tracker.update([])
    assert tracker.tracks == []
    after = [tracker.update([observe(shape, 200, 100, seed=50 + f)])[0] for f in range(10)]
    assert set(before) == {0}
    assert set(after) == {1}


def test_ids_never_reused_and_new_people_get_new_ids():
    tracker = Tracker(max_gap_frames=2)
    seen: list[int] = []
    for person in range(4):  # people one after another, each far from the last
        shape = make_person(10 + person)
        for f in range(5):
            seen.extend(tracker.update([observe(shape, 100 + 900 * person, 50, seed=f)]))
        for _ in range(3):
            tracker.update([])
    assert seen == [p for p in range(4) for _ in range(5)]


def test_far_jump_is_a_new_person():
    tracker = Tracker(max_gap_frames=10)
    shape = make_person(20)
    first = tracker.update([observe(shape, 100, 100)])[0]
    second = tracker.update([observe(shape, 1500, 100)])[0]
    assert first != second


@pytest.mark.parametrize("n_people", [2, 3, 5])
def test_shuffled_detection_order_keeps_ids(n_people: int):
    rng = np.random.default_rng(n_people)
    shapes = [make_person(30 + i) for i in range(n_people)]
    tracker = Tracker(max_gap_frames=3)
    first_ids = None
    for f in range(40):
        obs = [observe(shapes[i], 50 + 250 * i + 2 * f, 80 + 5 * np.sin(f / 5 + i), seed=f * 10 + i)
               for i in range(n_people)]
        perm = rng.permutation(n_people)
        ids = tracker.update([obs[i] for i in perm])
        by_person = [ids[list(perm).index(i)] for i in range(n_people)]
        if first_ids is None:
            first_ids = by_person
            assert len(set(first_ids)) == n_people
        assert by_person == first_ids


def test_reset_restarts_ids():
    tracker = Tracker()
    shape = make_person(40)
    tracker.update([observe(shape, 0, 0)])
    tracker.reset()
    assert tracker.tracks == [] and tracker.frame == -1
    assert tracker.update([observe(shape, 0, 0)]) == [0]


def test_invalid_arguments():
    with pytest.raises(ValueError):
        Tracker(max_gap_frames=-1)
    with pytest.raises(ValueError):
        Tracker(iou_weight=1.5)
