"""The biomechanical model from the `pose2sim` wheel on PyPI (BSD-3-Clause): Pose2Sim's simple
full-body OpenSim model (22 bodies, 40 coordinates, no muscles) and its anatomical marker set
(OpenCap's "study" markers: ASIS, PSIS, lateral and medial knee and ankle, heel, toes, shoulders,
C7, elbows, wrists, thigh and shank clusters, hip joint centres; 56 in all).

Only these two files are extracted (the bone meshes are for viewers; inverse kinematics does not
need them); the wheel is never installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zipfile
from pathlib import Path

from kinemesh.models.assets.pose2sim_clips import DEFAULT_CACHE, pose2sim_wheel

MODEL_FILE = "Model_Pose2Sim_simple.osim"
MARKERS_FILE = "Markers_LSTM.xml"
_MEMBERS = {MODEL_FILE: f"Pose2Sim/OpenSim_Setup/{MODEL_FILE}", MARKERS_FILE: f"Pose2Sim/OpenSim_Setup/{MARKERS_FILE}"}
DEFAULT_OUT = Path("var/models/opensim")


def ensure_opensim_model(out_dir: Path | str = DEFAULT_OUT, cache_dir: Path | str = DEFAULT_CACHE) -> tuple[Path, Path]:
    """(model .osim, marker set .xml) under `out_dir`, extracted from the pose2sim wheel if missing."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in _MEMBERS}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        out_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(pose2sim_wheel(Path(cache_dir))) as zf:
            for name in missing:
                tmp = paths[name].with_name(f".{name}.{os.getpid()}.tmp")
                with zf.open(_MEMBERS[name]) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(tmp, paths[name])
    return paths[MODEL_FILE], paths[MARKERS_FILE]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kinemesh.models.assets.opensim_models",
                                     description="Extract the OpenSim model and marker set from the pose2sim wheel.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    for path in ensure_opensim_model(args.out, args.cache_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
