"""MANO as the hand model's skeleton, from an operator's MANO_RIGHT.pkl through `smplx` (MANO's licence
forbids shipping it; nothing here needs it unless an operator chooses MANO over Anny's hand).

MANO's 16 joints (the wrist, then index, middle, pinky, ring, thumb, three each) are reordered to the
project's (`skeleton.HAND_JOINTS`: the wrist, then thumb, index, middle, ring, pinky), and its five
fingertips are the vertices smplx names (`vertex_ids["mano"]`). MANO poses like the project's skeleton:
each joint's rotation acts in the rest frame's axes about its rest centre, so `HandSkeleton` with MANO's
rest joints reproduces MANO's posed joints exactly (and its tips up to MANO's pose-corrective blend
shapes and skin blending). The rest pose is MANO's flat hand (`flat_hand_mean`), at the shape `betas`.

    python -m kinemesh.models.hands.mano_hand --mano DIR/MANO_RIGHT.pkl --out WEIGHTS/hand_skeleton.json

Train the hand model on it with `python -m kinemesh.models.training.train_hands --skeleton
WEIGHTS/hand_skeleton.json --out WEIGHTS`; a bundle built from those weights then poses MANO's joints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from kinemesh.models.hands.skeleton import FINGERS, HAND_JOINTS, HandSkeleton

# the project's joint j is MANO's joint MANO_OF_OURS[j] (MANO: wrist, index, middle, pinky, ring, thumb)
MANO_OF_OURS = [0, 13, 14, 15, 1, 2, 3, 4, 5, 6, 10, 11, 12, 7, 8, 9]


def mano_layer(path: str | Path):
    """smplx's MANO (right hand, full 45-D pose, flat rest hand) from the operator's file."""
    import smplx

    return smplx.MANO(str(path), is_rhand=True, use_pca=False, flat_hand_mean=True)


def rest_points(layer, betas: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """MANO's rest joints (16, 3) in the project's order and its fingertips (5, 3), thumb first,
    metres, in MANO's axes with the wrist at the origin."""
    betas = torch.zeros(1, layer.num_betas) if betas is None else betas.reshape(1, -1)
    from smplx.vertex_ids import vertex_ids

    with torch.no_grad():
        out = layer(betas=betas, global_orient=torch.zeros(1, 3), hand_pose=torch.zeros(1, 45))
    rest = out.joints[0, :16][MANO_OF_OURS]  # (16, 3)
    tips = out.vertices[0, [vertex_ids["mano"][f] for f in FINGERS]]  # (5, 3), thumb first
    return rest - rest[0], tips - rest[0]


def mano_skeleton(path: str | Path, betas: Tensor | None = None) -> HandSkeleton:
    return HandSkeleton(*rest_points(mano_layer(path), betas))


def to_mano_pose(rotations: Tensor) -> tuple[Tensor, Tensor]:
    """The project's joint rotations (B, 16, 3, 3) -> MANO's global_orient (B, 3, 3) and hand_pose
    (B, 15, 3, 3) in MANO's joint order."""
    inverse = [MANO_OF_OURS.index(m) for m in range(16)]
    ordered = rotations[:, inverse]  # (B, 16, 3, 3) in MANO's order
    return ordered[:, 0], ordered[:, 1:]


def describe(path: Path, layer) -> dict:
    """The skeleton file's content (the same fields as Anny's, `anny_hand.py`)."""
    rest, tips = rest_points(layer)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"source": f"MANO ({path.name}, sha256 {digest}) through smplx: flat rest hand, mean shape, right hand",
            "frame": "MANO's axes, origin at the wrist, metres",
            "joints": HAND_JOINTS, "fingers": list(FINGERS),
            "joint_positions": [[round(float(v), 6) for v in p] for p in rest],
            "tip_positions": [[round(float(v), 6) for v in p] for p in tips]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mano", type=Path, required=True, help="the operator's MANO_RIGHT.pkl")
    p.add_argument("--out", type=Path, required=True, help="where to write hand_skeleton.json")
    a = p.parse_args(argv)
    if not a.mano.is_file():
        print(f"no MANO file at {a.mano}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(describe(a.mano, mano_layer(a.mano)), indent=1) + "\n")
    print(f"hand skeleton written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
