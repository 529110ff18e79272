"""A stateless parametric body-model layer: pose, shape and translation in, mesh out.

One interface for every body model the service uses (Anny converted to a compact file,
SMPL/SMPL-X through `smplx`): rotations per pose joint, linear shape blend shapes, linear
blend skinning along a kinematic tree, a joint regressor and a 33-landmark (BlazePose)
regressor. All assets arrive as tensors (see `kinemesh.models.body.assets` for the file).

Skinning nodes vs pose joints: a skinning node is one rigid transform (a bone with its own
pivot). Several nodes may share one pose rotation (Anny's five toe bones follow the "foot"
rotation, each about its own head), so the layer keeps N nodes driven by J rotations; the
output joints are the mean of the posed heads of the nodes each joint drives. Bones that no
rotation drives are folded into their driven ancestor beforehand (exact for LBS: an
undriven bone's transform equals its parent's).

Conventions: metres; the frame is the model's own (the Anny file is converted to SMPL's:
Y up, the body faces +Z, the person's left is +X). Rotations are parent-relative in
world-aligned axes, as in SMPL. `transl` moves everything, as SMPL's `transl` does: identity
pose, zero translation gives the shaped template itself.

Shape legend:
    B batch, V vertices, S shape parameters, J pose joints, N skinning nodes,
    L landmarks (33, BlazePose order), F triangles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from kinemesh.models.rotations import rot6d_to_matrix  # 6D = the first two columns (project convention)


@dataclass(frozen=True)
class BodyModelConfig:
    name: str = "body"  # model id recorded in bundles and results, e.g. "anny-core24"
    num_vertices: int = 0  # V, mesh vertices
    num_shape: int = 0  # S, shape parameters (unit-variance PCA coefficients for Anny)
    num_joints: int = 0  # J, pose rotations (the root first: the global orientation)
    num_nodes: int = 0  # N, skinning nodes (rigid transforms with their own pivots)
    num_landmarks: int = 33  # L, BlazePose landmarks regressed from the posed mesh
    node_parents: tuple[int, ...] = ()  # (N,) parent node of each node, -1 for the root; parents first
    node_joint: tuple[int, ...] = ()  # (N,) the pose joint whose rotation drives each node
    joint_names: tuple[str, ...] = ()  # (J,) names of the pose joints, e.g. SMPL's
    landmark_names: tuple[str, ...] = ()  # (L,) BlazePose landmark names

    def __post_init__(self) -> None:
        n = self.num_nodes
        if len(self.node_parents) != n or len(self.node_joint) != n:
            raise ValueError("node_parents and node_joint need one entry per node")
        if n and self.node_parents[0] != -1:
            raise ValueError("node 0 must be the root (parent -1)")
        if any(not 0 <= p < i for i, p in enumerate(self.node_parents) if i):
            raise ValueError("every node's parent must come before it")
        if any(not 0 <= j < self.num_joints for j in self.node_joint):
            raise ValueError("node_joint entries must index the pose joints")
        if self.joint_names and len(self.joint_names) != self.num_joints:
            raise ValueError("joint_names needs one name per pose joint")


class BodyOutput(NamedTuple):
    vertices: torch.Tensor  # (B, V, 3)
    joints: torch.Tensor  # (B, J, 3)
    landmarks: torch.Tensor  # (B, L, 3)


class BodyLayer(nn.Module):
    """Linear blend skinning over a kinematic tree; no learnable parameters.

    forward(pose, shape, transl):
        pose   (B, J, 3, 3) rotation matrices, or (B, J, 6) 6D rotations (`kinemesh.models.rotations`)
        shape  (B, S)
        transl (B, 3)
    returns BodyOutput(vertices (B, V, 3), joints (B, J, 3), landmarks (B, L, 3)).
    """

    def __init__(
        self,
        config: BodyModelConfig,
        v_template: torch.Tensor,  # (V, 3)
        shapedirs: torch.Tensor,  # (V, 3, S)
        node_regressor: torch.Tensor,  # (N, V) rest node heads from the shaped template
        skin_weights: torch.Tensor,  # (V, N) rows sum to 1
        joint_from_nodes: torch.Tensor,  # (J, N) output joints as means of posed node heads
        landmark_regressor: torch.Tensor,  # (L, V) landmarks from the posed vertices, rows sum to 1
        faces: torch.Tensor | None = None,  # (F, 3) triangles; not used by forward
    ) -> None:
        super().__init__()
        c = config
        V, S, J, N, L = c.num_vertices, c.num_shape, c.num_joints, c.num_nodes, c.num_landmarks
        expected = {
            "v_template": (v_template, (V, 3)), "shapedirs": (shapedirs, (V, 3, S)),
            "node_regressor": (node_regressor, (N, V)), "skin_weights": (skin_weights, (V, N)),
            "joint_from_nodes": (joint_from_nodes, (J, N)),
            "landmark_regressor": (landmark_regressor, (L, V)),
        }
        for name, (t, shape) in expected.items():
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
        self.config = c
        f32 = torch.float32
        self.register_buffer("v_template", v_template.to(f32))
        # Stored (V*3, S) so the blend is one matmul.
        self.register_buffer("shapedirs", shapedirs.to(f32).reshape(V * 3, S))
        self.register_buffer("node_regressor", node_regressor.to(f32))
        self.register_buffer("skin_weights", skin_weights.to(f32))
        self.register_buffer("joint_from_nodes", joint_from_nodes.to(f32))
        self.register_buffer("landmark_regressor", landmark_regressor.to(f32))
        self.register_buffer("node_joint", torch.tensor(c.node_joint, dtype=torch.long), persistent=False)
        self.register_buffer("node_parent", torch.tensor([max(p, 0) for p in c.node_parents], dtype=torch.long),
                             persistent=False)
        faces_t = faces.to(torch.long) if faces is not None else torch.zeros(0, 3, dtype=torch.long)
        self.register_buffer("faces", faces_t, persistent=False)
        # Depth levels: nodes of one level have all their parents in earlier levels, so the chain
        # takes one batched product per level (a handful of graph nodes when exported).
        depth = [0] * N
        for i, p in enumerate(c.node_parents):
            if i:
                depth[i] = depth[p] + 1
        order = sorted(range(N), key=lambda i: (depth[i], i))  # nodes level by level
        self._levels: list[tuple[int, int]] = []  # (first, last + 1) positions of each level in `order`
        for d in range(1, max(depth, default=0) + 1):
            first = depth.count(0) if d == 1 else self._levels[-1][1]
            self._levels.append((first, first + depth.count(d)))
        position = {node: k for k, node in enumerate(order)}
        self.register_buffer("level_order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("level_parent_pos", torch.tensor(
            [position[c.node_parents[i]] if i else 0 for i in order], dtype=torch.long), persistent=False)
        self.register_buffer("level_inverse", torch.tensor(
            [position[i] for i in range(N)], dtype=torch.long), persistent=False)

    def _skeleton_bases(self) -> tuple[torch.Tensor, ...]:
        """Landmark blend folded through the skin weights (built once, then cached):
        LW (L, N) = R W, LX (L, N, 3) and LXS (L, N, 3, S) = sum_v R_lv W_vn (template / shape
        directions of v), HS (N, 3, S) = the node heads' shape directions. Exact for LBS, so the
        skeleton path equals the full forward's landmarks without touching V vertices per pose."""
        cache = getattr(self, "_bases", None)
        if cache is None or cache[0].device != self.v_template.device:
            V = self.v_template.shape[0]
            rw = self.landmark_regressor[:, :, None] * self.skin_weights[None]  # (L, V, N)
            lw = rw.sum(1)  # (L, N)
            lx = torch.einsum("lvn,vc->lnc", rw, self.v_template)  # (L, N, 3)
            dirs = self.shapedirs.reshape(V, 3, -1)  # (V, 3, S)
            lxs = torch.einsum("lvn,vcs->lncs", rw, dirs)  # (L, N, 3, S)
            h0 = self.node_regressor @ self.v_template  # (N, 3)
            hs = torch.einsum("nv,vcs->ncs", self.node_regressor, dirs)  # (N, 3, S)
            cache = (lw, lx, lxs, h0, hs)
            self._bases = cache
        return cache

    def skeleton(self, pose: torch.Tensor, shape: torch.Tensor, transl: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Joints (B, J, 3) and landmarks (B, L, 3) only, equal to `forward`'s, at O(L N) per pose.

        For training-data generation and refinement, where the V-vertex mesh is not needed.
        """
        lw, lx, lxs, h0, hs = self._skeleton_bases()
        heads = h0 + torch.einsum("ncs,bs->bnc", hs, shape)  # (B, N, 3)
        g_all, w_all = self.node_transforms(pose, heads)  # (B, N, 3, 3), (B, N, 3)
        x = lx + torch.einsum("lncs,bs->blnc", lxs, shape)  # (B, L, N, 3) folded rest points
        t_all = w_all - (g_all @ heads[..., None])[..., 0]  # (B, N, 3)
        rotated = torch.einsum("bnij,blnj->bli", g_all, x)  # (B, L, 3)
        landmarks = rotated + torch.einsum("ln,bnc->blc", lw, t_all) + transl[:, None, :]
        joints = torch.einsum("jn,bnc->bjc", self.joint_from_nodes, w_all) + transl[:, None, :]
        return joints, landmarks

    def node_transforms(self, pose: torch.Tensor, heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global node rotations G (B, N, 3, 3) and posed heads w (B, N, 3) (no translation) for
        pose (B, J, 3, 3) or (B, J, 6) and rest heads (B, N, 3): x -> G_n (x - h_n) + w_n per node."""
        rot = rot6d_to_matrix(pose) if pose.shape[-1] == 6 else pose  # (B, J, 3, 3)
        node_rot = rot[:, self.node_joint]  # (B, N, 3, 3)
        # Global rotations G_n = G_parent R_n and posed heads w_n = w_parent + G_parent (h_n - h_parent),
        # computed level by level on the nodes in `level_order`.
        rot_o = node_rot[:, self.level_order]  # (B, N, 3, 3)
        offs_o = (heads - heads[:, self.node_parent])[:, self.level_order]  # (B, N, 3)
        g_all = rot_o[:, :1]  # (B, 1, 3, 3) the root
        w_all = heads[:, :1]  # (B, 1, 3)
        for first, last in self._levels:
            par = self.level_parent_pos[first:last]
            g_par = g_all[:, par]  # (B, n, 3, 3)
            w_lvl = w_all[:, par] + (g_par @ offs_o[:, first:last, :, None])[..., 0]  # (B, n, 3)
            g_all = torch.cat([g_all, g_par @ rot_o[:, first:last]], 1)
            w_all = torch.cat([w_all, w_lvl], 1)
        return g_all[:, self.level_inverse], w_all[:, self.level_inverse]  # back in node order

    def shaped(self, shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rest vertices (B, V, 3) and rest node heads (B, N, 3) for shape (B, S)."""
        B = shape.shape[0]
        offsets = (shape @ self.shapedirs.T).reshape(B, -1, 3)  # (B, V, 3)
        v_shaped = self.v_template + offsets  # (B, V, 3)
        heads = torch.einsum("nv,bvc->bnc", self.node_regressor, v_shaped)  # (B, N, 3)
        return v_shaped, heads

    def forward(self, pose: torch.Tensor, shape: torch.Tensor, transl: torch.Tensor) -> BodyOutput:
        B = pose.shape[0]
        v_shaped, heads = self.shaped(shape)  # (B, V, 3), (B, N, 3)
        g_all, w_all = self.node_transforms(pose, heads)  # (B, N, 3, 3), (B, N, 3)

        # Node transforms x -> G x + t with t = w - G h; blend them per vertex (LBS).
        t_all = w_all - (g_all @ heads[..., None])[..., 0]  # (B, N, 3)
        affine = torch.cat([g_all, t_all[..., None]], -1).reshape(B, -1, 12)  # (B, N, 12)
        per_vertex = torch.einsum("vn,bnk->bvk", self.skin_weights, affine).reshape(B, -1, 3, 4)  # (B, V, 3, 4)
        # A broadcast sum, not a batched matmul: V tiny 3x3 products are slow as matmuls on CPU.
        vertices = (per_vertex[..., :3] * v_shaped[:, :, None, :]).sum(-1) + per_vertex[..., 3]  # (B, V, 3)

        offset = transl[:, None, :]  # (B, 1, 3)
        vertices = vertices + offset
        joints = torch.einsum("jn,bnc->bjc", self.joint_from_nodes, w_all) + offset  # (B, J, 3)
        landmarks = torch.einsum("lv,bvc->blc", self.landmark_regressor, vertices)  # (B, L, 3)
        return BodyOutput(vertices, joints, landmarks)
