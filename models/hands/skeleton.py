"""The hand: 16 joints (the wrist and three per finger, thumb first) and 21 keypoints in MediaPipe's
order (the wrist, then per finger its three joint centres and its tip), with forward kinematics.

Shape legend: B batch, J = 16 joints, F = 15 finger joints, K = 21 keypoints.

Rotations are SMPL-style: each joint's rotation (B, J, 3, 3) acts in the rest frame's axes about the
joint's centre; joint 0's is the hand's orientation. `finger_axes` gives, per finger joint, the
anatomical flexion axis (perpendicular to the bone and to the palm's normal, positive towards the
palm) and the abduction axis (the palm's normal), from the rest skeleton.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
HAND_JOINTS = ["wrist"] + [f"{f}{j}" for f in FINGERS for j in (1, 2, 3)]  # 16
HAND_PARENTS = [-1] + [p for f in range(5) for p in (0, 1 + 3 * f, 2 + 3 * f)]  # (J,)
# keypoint k -> (joint whose centre it is, or -1 - finger for that finger's tip)
KEYPOINTS = [0] + [k for f in range(5) for k in (1 + 3 * f, 2 + 3 * f, 3 + 3 * f, -1 - f)]  # 21
# the 21-keypoint graph: wrist to each finger's base, then along each finger, and across the knuckles
HAND_EDGES = [(0, 1 + 4 * f) for f in range(5)] + [(1 + 4 * f + i, 2 + 4 * f + i) for f in range(5) for i in range(3)] \
    + [(1 + 4 * f, 5 + 4 * f) for f in range(1, 4)]


class HandSkeleton(nn.Module):
    """Rest joints (J, 3) and tips (5, 3), metres, wrist at the origin; `forward` poses them."""

    def __init__(self, joints: Tensor, tips: Tensor) -> None:
        super().__init__()
        self.register_buffer("rest", joints.float())  # (J, 3)
        self.register_buffer("tips", tips.float())  # (5, 3)

    @classmethod
    def from_file(cls, path: str | Path) -> HandSkeleton:
        data = json.loads(Path(path).read_text())
        return cls(torch.tensor(data["joint_positions"]), torch.tensor(data["tip_positions"]))

    def forward(self, rotations: Tensor, scale: Tensor | None = None) -> Tensor:
        """rotations (B, J, 3, 3) -> keypoints (B, K, 3), metres, wrist at the origin; `scale` (B,)
        multiplies the hand's size."""
        B = rotations.shape[0]
        glob: list[Tensor] = []
        pos: list[Tensor] = []
        for j, parent in enumerate(HAND_PARENTS):
            if parent < 0:
                glob.append(rotations[:, 0])
                pos.append(self.rest[0].expand(B, 3))
            else:
                glob.append(glob[parent] @ rotations[:, j])
                pos.append(pos[parent] + torch.einsum("bij,j->bi", glob[parent], self.rest[j] - self.rest[parent]))
        out = []
        for k in KEYPOINTS:
            if k >= 0:
                out.append(pos[k])
            else:
                last = 3 + 3 * (-1 - k)  # the finger's distal joint
                out.append(pos[last] + torch.einsum("bij,j->bi", glob[last], self.tips[-1 - k] - self.rest[last]))
        points = torch.stack(out, 1)  # (B, K, 3)
        return points if scale is None else points * scale[:, None, None]

    def finger_axes(self) -> tuple[Tensor, Tensor]:
        """Flexion (F, 3) and abduction (F, 3) unit axes of the 15 finger joints, rest frame. Each
        finger's curl side is where its rest pose already bends (the palm for the fingers, across the
        palm for the thumb): abduction turns about that side's normal, flexion about bone x normal,
        so positive flexion curls the finger towards it."""
        r = self.rest
        flex, abduct = [], []
        for f in range(5):
            base = 1 + 3 * f
            prox = (r[base + 1] - r[base]) / (r[base + 1] - r[base]).norm()
            dist = (self.tips[f] - r[base + 2]) / (self.tips[f] - r[base + 2]).norm()
            side = dist - prox
            for i in range(3):
                j = base + i
                nxt = r[j + 1] if i < 2 else self.tips[f]
                bone = (nxt - r[j]) / (nxt - r[j]).norm()
                normal = side - (side @ bone) * bone
                normal = normal / normal.norm()
                flex.append(torch.linalg.cross(bone, normal))
                abduct.append(normal)
        flex, abduct = torch.stack(flex), torch.stack(abduct)
        return flex / flex.norm(dim=-1, keepdim=True), abduct
