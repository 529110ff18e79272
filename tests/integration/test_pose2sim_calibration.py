"""The Pose2Sim demo's Qualisys calibration, read into projection matrices (the benchmark's real 3D
reference triangulates with them): the convention is checked against the scene's geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kinemesh.models.assets.pose2sim_clips import demo_calibration


def test_cameras_stand_around_the_walkway_and_see_it_upright(clips: dict[str, Path]) -> None:
    projections = demo_calibration(clips["single_cam01"].parents[1])  # the cache the clips came from
    assert sorted(projections) == [f"single_cam0{i}" for i in range(1, 5)]
    for key, P in projections.items():
        centre = np.linalg.svd(P)[2][-1]
        centre = centre[:3] / centre[3]  # P @ [C, 1] = 0
        assert 1.0 < centre[2] < 3.0, (key, centre)  # mounted 1-3 m up (z is up)
        assert 1.5 < np.linalg.norm(centre[:2]) < 6.0, (key, centre)  # a few metres from the origin
        for height in (0.0, 1.0, 1.7):  # a person standing at the origin: feet, hips, head
            h = P @ np.array([0.0, 0.0, height, 1.0])
            assert h[2] > 0, key  # in front of the camera
            u, v = h[:2] / h[2]
            assert 0 <= u <= 1088 and 0 <= v <= 1920, (key, height, u, v)  # inside the portrait frame
        feet, head = (P @ [0, 0, 0, 1.0]), (P @ [0, 0, 1.7, 1.0])
        assert head[1] / head[2] < feet[1] / feet[2]  # up in the world is up in the image
