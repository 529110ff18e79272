"""NeurIK (BioPose): a spatial-temporal network from windows of virtual markers to the joint
coordinates of the OpenSim model and its body-segment scales, within anatomical limits by
construction.

Split of the work. The pelvis's six global coordinates (tilt, list, rotation, tx, ty, tz) are
solved exactly from the six pelvis markers (ASIS, PSIS, hip joint centres) by a rigid fit to the
scaled model's pelvis markers (`pelvis_pose`, Kabsch) and OpenSim's Z-X-Y rotation order; the
network sees the markers in that pelvis frame, so it never has to learn where the person stands or
which way they face, and predicts the 25 joint coordinates the markers determine (`UNOBSERVED`
ones stay at the model's default, as in OpenSim IK). Each output is range_min + (range_max
- range_min) * sigmoid(raw): inside the model's range whatever the input (no clipping afterwards).

Shape legend: B windows, T frames per window, M markers, F = 4 values per marker (x, y, z in the
pelvis frame, metres, and 1/0 seen), C joint coordinates, K scaled bodies, D marker-token width,
E frame-token width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

PELVIS_COORDINATES = ("pelvis_tilt", "pelvis_list", "pelvis_rotation", "pelvis_tx", "pelvis_ty", "pelvis_tz")
PELVIS_MARKERS = ("r.ASIS_study", "L.ASIS_study", "r.PSIS_study", "L.PSIS_study", "RHJC_study", "LHJC_study")


def pelvis_pose(observed: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rigid fit of the pelvis markers in the pelvis body's frame, local (6, 3), to observed
    (T, 6, 3) ground positions: rotation (T, 3, 3) and the pelvis origin (T, 3)."""
    pc = local.mean(0)
    oc = observed.mean(1)  # (T, 3)
    H = np.einsum("pi,tpj->tij", local - pc, observed - oc[:, None])  # (T, 3, 3)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, 1, 2) @ np.swapaxes(U, 1, 2)))  # (T,) no reflections
    D = np.zeros((len(d), 3, 3))
    D[:, 0, 0] = D[:, 1, 1] = 1.0
    D[:, 2, 2] = d
    R = np.swapaxes(Vt, 1, 2) @ D @ np.swapaxes(U, 1, 2)  # (T, 3, 3)
    return R, oc - (R @ pc[:, None])[..., 0]


def pelvis_coordinates(R: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """(T, 6) pelvis tilt, list, rotation (radians) and tx, ty, tz (metres) for R = Rz(tilt) Rx(list)
    Ry(rotation), the order of the model's ground_pelvis joint."""
    lst = np.arcsin(np.clip(R[:, 2, 1], -1.0, 1.0))
    rot = np.arctan2(-R[:, 2, 0], R[:, 2, 2])
    tilt = np.arctan2(-R[:, 0, 1], R[:, 1, 1])
    return np.concatenate([np.stack([tilt, lst, rot], 1), origin], 1)


def _axis_rotation(angle: np.ndarray, axis: int) -> np.ndarray:
    """(T,) angles -> (T, 3, 3) rotations about x (0), y (1) or z (2)."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.zeros((len(angle), 3, 3))
    R[:, axis, axis] = 1.0
    R[:, i, i], R[:, i, j], R[:, j, i], R[:, j, j] = c, -s, s, c
    return R


def pelvis_rotation(angles: np.ndarray) -> np.ndarray:
    """(T, 3) pelvis tilt, list, rotation (radians) -> R (T, 3, 3) = Rz(tilt) Rx(list) Ry(rotation)."""
    a = np.asarray(angles, dtype=np.float64)
    return _axis_rotation(a[:, 0], 2) @ _axis_rotation(a[:, 1], 0) @ _axis_rotation(a[:, 2], 1)


def rotvec_matrix(v: np.ndarray) -> np.ndarray:
    """Rotation vectors (T, 3) -> matrices (T, 3, 3) (Rodrigues; numpy, no per-call overhead)."""
    v = np.asarray(v, dtype=np.float64)
    theta = np.linalg.norm(v, axis=1)
    k = v / np.maximum(theta, 1e-12)[:, None]
    K = np.zeros((len(v), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = k[:, 2], -k[:, 1], k[:, 0]
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3) + s * K + (1.0 - c) * (K @ K)


def pelvis_residual(R: np.ndarray, origin: np.ndarray, pelvis: np.ndarray) -> np.ndarray:
    """What turns the rigid fit (R (T, 3, 3), origin (T, 3)) into the pelvis coordinates (T, 6)
    OpenSim IK found: (T, 6) rotation vector of R^T R_ik and R^T (origin_ik - origin), pelvis frame."""
    from scipy.spatial.transform import Rotation

    turn = np.swapaxes(R, 1, 2) @ pelvis_rotation(pelvis[:, :3])
    shift = np.einsum("tji,tj->ti", R, pelvis[:, 3:] - origin)
    return np.concatenate([Rotation.from_matrix(turn).as_rotvec(), shift], 1)


def apply_pelvis_residual(R: np.ndarray, origin: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """The inverse of `pelvis_residual`: pelvis coordinates (T, 6) from the fit and a residual (T, 6)."""
    turned = R @ rotvec_matrix(residual[:, :3])
    return pelvis_coordinates(turned, origin + np.einsum("tij,tj->ti", R, residual[:, 3:]))


def in_pelvis_frame(markers: np.ndarray, R: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Ground markers (T, M, 3) -> the pelvis frame: R^T (x - origin)."""
    return np.einsum("tji,tmj->tmi", R, markers - origin[:, None])


# Each marker's neighbour up the limb (the marker itself where none: the pelvis's six and C7). The
# network also sees each marker relative to it: the distal joints (ankle, subtalar, forearm) turn
# their markers by about a millimetre a degree, too fine to read off positions half a metre from
# the pelvis.
MARKER_PARENTS = {
    **{f"{s}_{a}": f"{s}_{b}" for s in ("r", "L") for a, b in (
        ("mknee_study", "knee_study"), ("ankle_study", "knee_study"), ("mankle_study", "ankle_study"),
        ("toe_study", "ankle_study"), ("calc_study", "ankle_study"), ("5meta_study", "calc_study"),
        ("lelbow_study", "shoulder_study"), ("melbow_study", "lelbow_study"), ("lwrist_study", "lelbow_study"),
        ("mwrist_study", "lwrist_study"))},
    "r_knee_study": "RHJC_study", "L_knee_study": "LHJC_study",
    "r_shoulder_study": "C7_study", "L_shoulder_study": "C7_study",
}
RELATIVE_SCALE = 4.0  # relative positions (0.05-0.4 m) scaled towards unit size


def marker_parents(names: list[str] | tuple[str, ...]) -> tuple[int, ...]:
    """Index of each marker's MARKER_PARENTS neighbour in `names` (its own index where none)."""
    return tuple(names.index(MARKER_PARENTS[n]) if n in MARKER_PARENTS else i for i, n in enumerate(names))


# Coordinates no virtual marker moves (no markers on the toes, the head or the hands): OpenSim IK
# leaves them at the model's default, and NeurIK does not predict them.
UNOBSERVED = ("mtp_angle_r", "mtp_angle_l", "neck_flexion", "neck_bending", "neck_rotation",
              "wrist_flex_r", "wrist_dev_r", "wrist_flex_l", "wrist_dev_l")


@dataclass
class NeurIKConfig:
    markers: int = 31  # M
    coordinates: int = 25  # C: the joint coordinates NeurIK predicts (not the pelvis's, not UNOBSERVED)
    bodies: int = 22  # K: scaled bodies
    window: int = 16  # T: frames per window (longer tracks run window by window)
    dim: int = 32  # D: marker tokens
    depth: int = 1  # spatial blocks (attention across the markers of a frame)
    frame_dim: int = 192  # E: frame tokens
    time_depth: int = 2  # temporal blocks (attention across the frames of a window)
    heads: int = 2
    scale_min: float = 0.6  # body scales are bounded to [scale_min, scale_max]
    scale_max: float = 1.6
    pelvis_turn_max: float = 0.25  # radians: the pelvis residual's rotation vector, each component
    pelvis_shift_max: float = 0.05  # metres: its shift, each component
    parents: tuple[int, ...] = ()  # `marker_parents` of the training markers (empty: none)


class _Block(nn.Module):
    """Pre-norm self-attention over the token axis of (B, N, D), then an MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, N, D)
        h = self.n1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.n2(x))


class NeurIK(nn.Module):
    """markers (B, T, M, 4) -> joint coordinates (B, T, C) within [lower, upper], the pelvis residual
    (B, T, 6) (see `pelvis_residual`: OpenSim IK places the pelvis by all the markers, not only its
    six, so it sits a few degrees off their rigid fit), body scales (B, K).

    Spatial blocks attend across the M marker tokens of each frame (D wide); each frame's tokens
    are then flattened into one frame token (E wide) and temporal blocks attend across the T frames
    of the window. The heads read each frame token (coordinates) and their mean (scales)."""

    def __init__(self, cfg: NeurIKConfig, lower: Tensor, upper: Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("lower", lower.float().clone())  # (C,) SI
        self.register_buffer("upper", upper.float().clone())  # (C,)
        D, E = cfg.dim, cfg.frame_dim
        parents = list(cfg.parents) or list(range(cfg.markers))
        self.register_buffer("parents", torch.tensor(parents, dtype=torch.long))  # (M,)
        self.embed = nn.Linear(7, D)  # position, seen, position relative to the parent marker
        self.marker_embed = nn.Parameter(torch.randn(cfg.markers, D) * 0.02)  # (M, D)
        self.space = nn.ModuleList(_Block(D, cfg.heads) for _ in range(cfg.depth))
        self.space_norm = nn.LayerNorm(D)
        self.to_frame = nn.Linear(cfg.markers * D, E)
        self.time_embed = nn.Parameter(torch.randn(cfg.window, E) * 0.02)  # (T, E)
        self.time = nn.ModuleList(_Block(E, cfg.heads) for _ in range(cfg.time_depth))
        self.norm = nn.LayerNorm(E)
        self.coord_head = nn.Sequential(nn.Linear(E, E), nn.GELU(), nn.Linear(E, cfg.coordinates))
        self.scale_head = nn.Linear(E, cfg.bodies)
        self.pelvis_head = nn.Linear(E, 6)
        bound = torch.tensor([cfg.pelvis_turn_max] * 3 + [cfg.pelvis_shift_max] * 3)
        self.register_buffer("pelvis_bound", bound)  # (6,)

    def forward(self, markers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, M, _ = markers.shape
        xyz, seen = markers[..., :3], markers[..., 3:]
        up = markers[:, :, self.parents]  # (B, T, M, 4) each marker's parent
        rel = (xyz - up[..., :3]) * (seen * up[..., 3:]) * RELATIVE_SCALE  # zero where either is unseen
        x = (self.embed(torch.cat([markers, rel], -1)) + self.marker_embed).reshape(B * T, M, self.cfg.dim)
        for block in self.space:
            x = block(x)
        f = self.to_frame(self.space_norm(x).reshape(B, T, M * self.cfg.dim)) + self.time_embed[:T]  # (B, T, E)
        for block in self.time:
            f = block(f)
        f = self.norm(f)
        coords = self.lower + (self.upper - self.lower) * torch.sigmoid(self.coord_head(f))  # (B, T, C)
        c = self.cfg
        scales = c.scale_min + (c.scale_max - c.scale_min) * torch.sigmoid(self.scale_head(f.mean(1)))  # (B, K)
        pelvis = self.pelvis_bound * torch.tanh(self.pelvis_head(f))  # (B, T, 6)
        return coords, pelvis, scales


def load_neurik(path: Path | str) -> tuple[NeurIK, dict]:
    """A trained NeurIK checkpoint (`train_neurik`'s neurik.pt) in eval mode, and its metadata
    (coordinate_names, marker_names, bodies)."""
    saved = torch.load(path, weights_only=True)
    cfg = NeurIKConfig(**saved["config"])
    net = NeurIK(cfg, torch.zeros(cfg.coordinates), torch.ones(cfg.coordinates))
    net.load_state_dict(saved["state_dict"])  # the ranges are buffers: they come with the weights
    return net.eval(), {k: saved[k] for k in ("coordinate_names", "marker_names", "bodies")}


def marker_features(local: np.ndarray) -> np.ndarray:
    """Pelvis-frame markers (..., M, 3) with NaN where unseen -> network input (..., M, 4)."""
    seen = np.isfinite(local).all(-1, keepdims=True)
    return np.concatenate([np.where(seen, local, 0.0), seen.astype(local.dtype)], -1).astype(np.float32)


def windows(frames: int, window: int) -> list[slice]:
    """Windows of `window` frames tiling `frames` frames, the last one ending at the end (it overlaps
    the one before unless the length divides evenly): each frame is run about once."""
    if frames <= window:
        return [slice(0, frames)]
    starts = list(range(0, frames - window + 1, window))
    if starts[-1] != frames - window:
        starts.append(frames - window)
    return [slice(s, s + window) for s in starts]


def angle_rmse_deg(pred: np.ndarray, truth: np.ndarray, wrap: bool = False) -> np.ndarray:
    """Per-coordinate RMSE (C,) in degrees of angle arrays (..., C) in radians; with wrap, each
    difference is taken the short way round (for the pelvis's global angles)."""
    d = np.asarray(pred, dtype=np.float64) - truth
    if wrap:
        d = (d + math.pi) % (2 * math.pi) - math.pi
    return np.sqrt(np.mean(d**2, axis=tuple(range(d.ndim - 1)))) * 180.0 / math.pi


# A NeurIK graph, however it runs (PyTorch, ONNX Runtime, Triton): windows (B, T, M, 4) -> joint
# coordinates (B, T, C) and pelvis residuals (B, T, 6).
WindowFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def torch_window_fn(net: NeurIK) -> WindowFn:
    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            coords, pelvis, _ = net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return coords.numpy(), pelvis.numpy()

    return run


def run_windows(run: WindowFn, features: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (T, M, 4) of a whole track -> joint coordinates (T, C) and pelvis residuals (T, 6):
    every window in one batched call, the last window's overlap averaged; a track shorter than a
    window is padded by repeating its last frame (the graph's T is fixed)."""
    T = len(features)
    if T == 0:
        raise ValueError("no frames")
    padded = np.concatenate([features, np.repeat(features[-1:], window - T, 0)]) if T < window else features
    spans = windows(len(padded), window)
    coords, pelvis = run(np.stack([padded[s] for s in spans]))  # (B, W, C), (B, W, 6)
    out_c = np.zeros((len(padded), coords.shape[-1]))
    out_p = np.zeros((len(padded), 6))
    count = np.zeros((len(padded), 1))
    for k, s in enumerate(spans):
        out_c[s] += coords[k]
        out_p[s] += pelvis[k]
        count[s] += 1
    return (out_c / count)[:T], (out_p / count)[:T]


def solve(run: WindowFn, markers: np.ndarray, pelvis_index: list[int], pelvis_local: np.ndarray,
          window: int) -> tuple[np.ndarray, np.ndarray]:
    """NeurIK on a track: ground markers (T, M, 3) in the network's marker order, the pelvis markers'
    indices among them and their locations on the scaled model's pelvis (6, 3) -> pelvis
    coordinates (T, 6) and joint coordinates (T, C), SI."""
    markers = np.asarray(markers, dtype=np.float64)
    if not np.isfinite(markers[:, pelvis_index]).all():
        raise ValueError("NeurIK needs the six pelvis markers in every frame")
    R, origin = pelvis_pose(markers[:, pelvis_index], pelvis_local)
    coords, residual = run_windows(run, marker_features(in_pelvis_frame(markers, R, origin)), window)
    return apply_pelvis_residual(R, origin, residual), coords
