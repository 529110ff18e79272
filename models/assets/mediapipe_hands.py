"""Build `hand_landmarker.task` (MediaPipe's hand landmarker, Apache-2.0) from the same PyPI wheel as
the pose landmarker (`mediapipe_pose`): mediapipe 0.10.21 bundles the palm detector and the 21-point
hand landmark graph. Unlike the pose graphs these carry usable input metadata, so they are zipped
as they are (verified against pinned sha256, 64-byte aligned, stored), under the member names the
Tasks API's HandLandmarker expects, and loaded once with the installed runtime to check them.

CLI: python -m kinemesh.models.assets.mediapipe_hands --out var/models/mediapipe [--wheel PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path

from kinemesh.models.assets.mediapipe_pose import (
    DEFAULT_OUT,
    LICENSE_FILE,
    LICENSE_MEMBER,
    WHEEL_PROJECT,
    WHEEL_VERSION,
    BuildResult,
    ModelBuildError,
    _aligned_zip,
    _atomic_write,
    _sha256,
    locate_wheel,
)
from kinemesh.models.assets.mediapipe_pose import is_built as pose_is_built
from kinemesh.models.assets.wheel_cache import sha256_file

BUILDER_VERSION = 1
TASK_FILE = "hand_landmarker.task"
MANIFEST_FILE = "hand_manifest.json"
# (member in the wheel, its sha256 in mediapipe 0.10.21, member name inside the .task)
GRAPHS = (
    ("mediapipe/modules/palm_detection/palm_detection_full.tflite",
     "1b14e9422c6ad006cde6581a46c8b90dd573c07ab7f3934b5589e7cea3f89a54", "hand_detector.tflite"),
    ("mediapipe/modules/hand_landmark/hand_landmark_full.tflite",
     "11c272b891e1a99ab034208e23937a8008388cf11ed2a9d776ed3d01d0ba00e3", "hand_landmarks_detector.tflite"),
)
# MediaPipe's 21 hand landmarks, in order
HAND_LANDMARKS = (
    "wrist", "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip", "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip", "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)


def task_path(model_dir: Path | str) -> Path:
    """Where the hand task lives under a settings model_dir."""
    return Path(model_dir) / "mediapipe" / TASK_FILE


def is_built(out_dir: Path | str) -> bool:
    """True when `out_dir` holds a hand .task whose sha256 matches its manifest."""
    return pose_is_built(out_dir, TASK_FILE, MANIFEST_FILE, BUILDER_VERSION)


def build(out_dir: Path | str = DEFAULT_OUT, wheel: Path | str | None = None, cache_dir: Path | str | None = None,
          force: bool = False) -> BuildResult:
    """Build the hand .task into `out_dir` unless a matching one is there (the wheel as `mediapipe_pose`
    finds it)."""
    out_dir = Path(out_dir)
    target = out_dir / TASK_FILE
    if not force and is_built(out_dir):
        return BuildResult(target, json.loads((out_dir / MANIFEST_FILE).read_text()), skipped=True)
    t0 = time.perf_counter()
    wheel_path = locate_wheel(wheel, cache_dir)
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            sources = {member: zf.read(member) for member, _, _ in GRAPHS}
            license_text = zf.read(LICENSE_MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelBuildError(f"{wheel_path} is not the mediapipe {WHEEL_VERSION} wheel this needs: {exc}") from exc
    for member, digest, _ in GRAPHS:
        if _sha256(sources[member]) != digest:
            raise ModelBuildError(f"{member} in {wheel_path.name} has sha256 {_sha256(sources[member])}, "
                                  f"expected {digest}")
    bundle = _aligned_zip([(name, sources[member]) for member, _, name in GRAPHS])
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, bundle)
    _atomic_write(out_dir / LICENSE_FILE, license_text)
    manifest = {
        "name": "hand_landmarker", "builder": "kinemesh.models.assets.mediapipe_hands",
        "builder_version": BUILDER_VERSION, "license": "Apache-2.0", "license_file": LICENSE_FILE,
        "source": {"package": WHEEL_PROJECT, "version": WHEEL_VERSION, "wheel": wheel_path.name,
                   "wheel_sha256": sha256_file(wheel_path), "index": "PyPI"},
        "graphs": [{"bundle_member": name, "source_member": member, "sha256": digest}
                   for member, digest, name in GRAPHS],
        "landmark_names": list(HAND_LANDMARKS),
        "output": {"file": TASK_FILE, "sha256": _sha256(bundle), "bytes": len(bundle)},
        "verified_with_runtime": _verify(target),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    _atomic_write(out_dir / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    return BuildResult(target, manifest, skipped=False)


def _verify(path: Path) -> str | None:
    """Load the task with the installed runtime and run it on a blank image (None without mediapipe)."""
    try:
        import mediapipe as mp
        import numpy as np
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import HandLandmarker, HandLandmarkerOptions, RunningMode
    except ImportError:
        return None
    options = HandLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                    running_mode=RunningMode.IMAGE)
    try:
        with HandLandmarker.create_from_options(options) as landmarker:
            landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.zeros((64, 64, 3), np.uint8)))
    except Exception as exc:
        raise ModelBuildError(f"the built {path.name} does not load in mediapipe {mp.__version__}: {exc}") from exc
    return str(mp.__version__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build MediaPipe's hand landmarker .task from the PyPI wheel.")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--wheel", default=None)
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    built = build(a.out, a.wheel, force=a.force)
    print(f"hand model {'already built' if built.skipped else 'built'}: {built.task_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
