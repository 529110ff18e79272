"""Forward kinematics of an OpenSim model in PyTorch: the model's markers as a differentiable,
frame-batched function of its coordinates, for refining many frames at once.

The tree is read once from the OpenSim model (a scaled subject's model included): each joint's
parent and child offset frames (as transforms in their bodies), its kind and, for a CustomJoint,
its six transform axes. A CustomJoint's three rotations turn about their axes one after the other,
each axis fixed in the frame the previous rotations produced (body-fixed), and its three
translations move the child frame along axes of the parent frame; a PinJoint turns about the
frames' z axis, a UniversalJoint about x then the turned y, a WeldJoint not at all. A transform
axis's value is a function of its coordinates: linear and constant functions are kept exact; any
other function of one coordinate (the knee's splines, scaled by a multiplier after scaling) is
sampled from OpenSim over the coordinate's range and interpolated linearly (`SAMPLES` points:
<1e-6 m against OpenSim's own positions; checked in tests/integration/test_osim_torch.py).
The markers' Jacobian is analytic: a turning axis moves what it carries by axis x lever, a sliding
one by the axis, times the axis function's slope.

`fit_markers` uses both for OpenSim IK's problem (the least-squares fit of the model's markers to
measured ones) on every frame at once: Levenberg-Marquardt from a starting pose (NeurIK's), within
the bounds IK keeps (`ik_bounds`: the model's clamped coordinates).

Shape legend: T frames, C coordinates (the model's order), M markers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kinemesh.models.biomech.neurik import UNOBSERVED
from kinemesh.models.biomech.opensim_model import OsimModel, _opensim

SAMPLES = 513  # points a tabulated transform-axis function is sampled at (linear between them)
_PAD = 0.2  # the sampled interval reaches this far beyond the coordinate's range (radians or metres)
_F64 = torch.float64
FIT_CHUNK = 256  # frames fitted at once (bounds the Jacobian's memory: ~20 MB a chunk)


def _transform(x) -> tuple[np.ndarray, np.ndarray]:
    """SimTK Transform -> (R (3, 3), p (3,))."""
    r, p = x.R(), x.p()
    return np.array([[r.get(i, j) for j in range(3)] for i in range(3)]), np.array([p.get(i) for i in range(3)])


def _cross_matrix(a: np.ndarray) -> np.ndarray:
    """(3,) -> (3, 3) K with K v = a x v."""
    return np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])


@dataclass
class _Axis:
    """One transform axis of a joint: its unit direction and its value as a function of one
    coordinate (or a constant)."""

    axis: torch.Tensor  # (3,) unit, in the frame the previous rotations of its joint produced
    coordinate: int  # index into the model's coordinates, -1 for a constant
    kind: str  # "linear" | "constant" | "table"
    a: float = 0.0  # linear: a * q + b; constant: b
    b: float = 0.0
    grid0: float = 0.0  # table: first sample's coordinate value and the spacing
    step: float = 1.0
    values: torch.Tensor | None = None  # table: (SAMPLES,)

    def __post_init__(self) -> None:
        k = _cross_matrix(self.axis.numpy())
        self.k = torch.tensor(k, dtype=_F64)  # Rodrigues: R = I + sin(v) K + (1 - cos(v)) K^2
        self.k2 = torch.tensor(k @ k, dtype=_F64)

    def __call__(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates (T, C) -> this axis's value (T,) and its derivative by its coordinate (T,)."""
        if self.kind == "constant":
            return torch.full(q.shape[:1], self.b, dtype=_F64), torch.zeros(q.shape[:1], dtype=_F64)
        x = q[:, self.coordinate]
        if self.kind == "linear":
            return self.a * x + self.b, torch.full_like(x, self.a)
        v = self.values
        raw = (x - self.grid0) / self.step
        u = raw.clamp(0, len(v) - 1 - 1e-6)  # held at the end values beyond the sampled interval
        i = u.floor().long()
        w = u - i
        inside = (raw >= 0) & (raw <= len(v) - 1)
        return v[i] * (1 - w) + v[i + 1] * w, torch.where(inside, (v[i + 1] - v[i]) / self.step, 0.0)

    def rotation(self, value: torch.Tensor) -> torch.Tensor:
        """Angles (T,) about this axis -> (T, 3, 3)."""
        a = value[:, None, None]
        return torch.eye(3, dtype=_F64) + torch.sin(a) * self.k + (1 - torch.cos(a)) * self.k2


@dataclass
class _Joint:
    parent: int  # index into `bodies` (-1: ground)
    child: int
    parent_offset: tuple[torch.Tensor, torch.Tensor]  # frame F in the parent body: (R (3, 3), p (3,))
    child_offset: tuple[torch.Tensor, torch.Tensor]  # frame M in the child body
    rotations: list[_Axis]  # applied one after the other, each about an axis of the turned frame
    translations: list[_Axis]  # along axes of F


def _linear(axis: np.ndarray, coordinate: int) -> _Axis:
    return _Axis(torch.tensor(axis, dtype=_F64), coordinate, "linear", a=1.0)


class TorchKinematics:
    """Markers (T, M, 3) of an OpenSim model from its coordinates (T, C), with their Jacobian."""

    def __init__(self, model: OsimModel, marker_names: list[str] | tuple[str, ...]) -> None:
        osim = _opensim()
        m = model._model
        coords = model.coordinate_names
        self.marker_names = list(marker_names)
        js = m.getJointSet()
        pending = [js.get(i) for i in range(js.getSize())]
        bodies: list[str] = []
        self.joints: list[_Joint] = []
        while pending:  # parents before children
            ready = [j for j in pending if j.getParentFrame().findBaseFrame().getName() in ("ground", *bodies)]
            if not ready:
                raise ValueError("the model's joints do not form a tree rooted at ground")
            for j in ready:
                parent = j.getParentFrame().findBaseFrame().getName()
                bodies.append(j.getChildFrame().findBaseFrame().getName())
                self.joints.append(self._joint(osim, j, bodies, parent, coords, model.ranges))
                pending.remove(j)
        self.bodies = bodies
        ms = m.getMarkerSet()
        owner, local = [], []
        for name in self.marker_names:
            mk = ms.get(name)
            frame = mk.getParentFrame()
            r, p = _transform(frame.findTransformInBaseFrame())
            loc = mk.get_location()
            owner.append(bodies.index(frame.findBaseFrame().getName()))
            local.append(r @ np.array([loc.get(0), loc.get(1), loc.get(2)]) + p)
        self.marker_body = torch.tensor(owner)
        self.marker_local = torch.tensor(np.asarray(local), dtype=_F64)  # (M, 3)
        below = [{j.child} for j in self.joints]  # each joint's child body and every body it carries
        for k in range(len(self.joints)):
            for jt in self.joints[k + 1:]:  # parents come first, so one pass collects the subtree
                if jt.parent in below[k]:
                    below[k].add(jt.child)
        self._moves = torch.tensor([[b in below[k] for b in owner] for k in range(len(self.joints))])  # (J, M)

    @staticmethod
    def _joint(osim, j, bodies: list[str], parent: str, coords: list[str], ranges: np.ndarray) -> _Joint:
        def offset(frame) -> tuple[torch.Tensor, torch.Tensor]:
            r, p = _transform(frame.findTransformInBaseFrame())
            return torch.tensor(r, dtype=_F64), torch.tensor(p, dtype=_F64)

        cls = j.getConcreteClassName()
        own = [coords.index(j.get_coordinates(i).getName()) for i in range(j.numCoordinates())]
        rotations: list[_Axis] = []
        translations: list[_Axis] = []
        if cls == "PinJoint":  # about the frames' common z axis
            rotations = [_linear(np.array([0.0, 0.0, 1.0]), own[0])]
        elif cls == "UniversalJoint":  # about x, then about the turned y
            rotations = [_linear(np.array([1.0, 0.0, 0.0]), own[0]), _linear(np.array([0.0, 1.0, 0.0]), own[1])]
        elif cls == "CustomJoint":
            st = osim.CustomJoint.safeDownCast(j).getSpatialTransform()
            for k in range(6):
                axis = TorchKinematics._axis(osim, j.getName(), st.getTransformAxis(k), coords, ranges)
                if axis.kind == "constant" and axis.b == 0.0:
                    continue  # does not move
                (rotations if k < 3 else translations).append(axis)
        elif cls != "WeldJoint":
            raise ValueError(f"joint {j.getName()}: {cls} is not supported")
        return _Joint(bodies.index(parent) if parent != "ground" else -1, len(bodies) - 1,
                      offset(j.getParentFrame()), offset(j.getChildFrame()), rotations, translations)

    @staticmethod
    def _axis(osim, joint: str, ta, coords: list[str], ranges: np.ndarray) -> _Axis:
        v = ta.getAxis()
        axis = np.array([v.get(0), v.get(1), v.get(2)])
        axis = torch.tensor(axis / np.linalg.norm(axis), dtype=_F64)
        arr = ta.getCoordinateNamesInArray()
        names = [arr.get(i) for i in range(arr.getSize())]
        fn = ta.get_function()
        kind = fn.getConcreteClassName()
        if len(names) > 1:
            raise ValueError(f"joint {joint}: a transform axis of {len(names)} coordinates is not supported")
        if not names or kind == "Constant":
            return _Axis(axis, -1, "constant", b=float(fn.calcValue(osim.Vector(1, 0.0))))
        c = coords.index(names[0])
        if kind == "LinearFunction":
            lf = osim.LinearFunction.safeDownCast(fn)
            return _Axis(axis, c, "linear", a=lf.getSlope(), b=lf.getIntercept())
        lo, hi = ranges[c]
        grid = np.linspace(lo - _PAD, hi + _PAD, SAMPLES)
        values = np.array([fn.calcValue(osim.Vector(1, float(x))) for x in grid])
        return _Axis(axis, c, "table", grid0=float(grid[0]), step=float(grid[1] - grid[0]),
                     values=torch.tensor(values, dtype=_F64))

    def _forward(self, q: torch.Tensor, want: bool):
        """Each body's pose in ground, R (T, B, 3, 3) and p (T, B, 3), and, when `want`, every moving
        axis: (joint, coordinate, world direction (T, 3), a point on it (T, 3) or None for a
        translation, d value / d coordinate (T,))."""
        T = q.shape[0]
        rs: list[torch.Tensor] = []
        ps: list[torch.Tensor] = []
        axes: list = []
        for k, jt in enumerate(self.joints):
            rf, pf = jt.parent_offset
            rm, pm = jt.child_offset
            if jt.parent < 0:
                r_gf, p_gf = rf.expand(T, 3, 3), pf.expand(T, 3)
            else:
                rp, pp = rs[jt.parent], ps[jt.parent]
                r_gf, p_gf = rp @ rf, pp + rp @ pf
            p_fm = torch.zeros(T, 3, dtype=_F64)
            for ax in jt.translations:
                value, slope = ax(q)
                p_fm = p_fm + ax.axis * value[:, None]
                if want and ax.coordinate >= 0:
                    axes.append((k, ax.coordinate, r_gf @ ax.axis, None, slope))
            p_gm = p_gf + (r_gf @ p_fm[..., None])[..., 0]  # the rotations turn about M's origin
            r_gm = r_gf
            for ax in jt.rotations:
                value, slope = ax(q)
                if want and ax.coordinate >= 0:
                    axes.append((k, ax.coordinate, r_gm @ ax.axis, p_gm, slope))
                r_gm = r_gm @ ax.rotation(value)
            r_gb = r_gm @ rm.T  # the child body: M = B * X_BM, so B = M * X_BM^-1
            p_gb = p_gm - r_gb @ pm
            rs.append(r_gb)
            ps.append(p_gb)
        return torch.stack(rs, 1), torch.stack(ps, 1), axes

    def euler_triples(self) -> list[tuple[int, int, int]]:
        """The joints turned by three coordinates, one angle each about distinct orthogonal axes
        (shoulders, hips, back, neck, the pelvis's orientation): their coordinate indices, for
        each of which (a1 + pi, pi - a2, a3 + pi) is the same orientation as (a1, a2, a3) (checked
        on random angles; see `signal.alternate_euler`)."""
        out = []
        rng = np.random.default_rng(0)
        for jt in self.joints:
            axes = jt.rotations
            coords = [ax.coordinate for ax in axes]
            if (len(axes) != 3 or len(set(coords)) != 3 or min(coords) < 0
                    or any(ax.kind != "linear" or abs(ax.a) != 1.0 or ax.b != 0.0 for ax in axes)
                    or any(ax.coordinate in coords for ax in jt.translations)):
                continue
            angles = torch.tensor(rng.uniform(-np.pi, np.pi, (4, 3)), dtype=_F64)
            alternate = torch.stack([angles[:, 0] + np.pi, np.pi - angles[:, 1], angles[:, 2] + np.pi], 1)
            turn, turn_alt = (axes[0].rotation(a[:, 0]) @ axes[1].rotation(a[:, 1]) @ axes[2].rotation(a[:, 2])
                              for a in (angles, alternate))
            if torch.allclose(turn, turn_alt, atol=1e-9):
                out.append((coords[0], coords[1], coords[2]))
        return out

    def body_transforms(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates (T, C) SI -> each body's pose in ground (order: `bodies`): R (T, B, 3, 3) and
        p (T, B, 3), float64."""
        r, p, _ = self._forward(q.to(_F64), want=False)
        return r, p

    def _place(self, r: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        rb, pb = r[:, self.marker_body], p[:, self.marker_body]  # (T, M, 3, 3), (T, M, 3)
        return (rb @ self.marker_local[None, :, :, None])[..., 0] + pb

    def markers(self, q: torch.Tensor) -> torch.Tensor:
        """Coordinates (T, C) SI -> marker positions (T, M, 3) in ground, metres (float64)."""
        r, p, _ = self._forward(q.to(_F64), want=False)
        return self._place(r, p)

    def markers_jacobian(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinates (T, C) SI -> marker positions (T, M, 3) and their derivatives by every
        coordinate (T, M, 3, C): a turning axis moves each marker it carries by axis x (marker - a
        point on the axis), a sliding one by the axis, each times its function's slope."""
        q = q.to(_F64)
        r, p, axes = self._forward(q, want=True)
        x = self._place(r, p)
        T, C = q.shape
        joint = torch.tensor([a[0] for a in axes])
        coord = torch.tensor([a[1] for a in axes])
        w = torch.stack([a[2] for a in axes], 1)  # (T, D, 3)
        turns = torch.tensor([a[3] is not None for a in axes])
        origin = torch.stack([a[3] if a[3] is not None else torch.zeros(T, 3, dtype=_F64) for a in axes], 1)
        slope = torch.stack([a[4] for a in axes], 1)  # (T, D)
        arm = x[:, None] - origin[:, :, None]  # (T, D, M, 3)
        d = torch.where(turns[None, :, None, None], torch.linalg.cross(w[:, :, None].expand_as(arm), arm), w[:, :, None])
        d = d * (slope[..., None, None] * self._moves[joint][None, :, :, None])  # (T, D, M, 3)
        onehot = torch.nn.functional.one_hot(coord, C).to(_F64)  # (D, C)
        return x, torch.einsum("tdmk,dc->tmkc", d, onehot)


def ik_bounds(model: OsimModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What OpenSim IK lets move, for `fit_markers`: lower and upper bounds (C,) (the ranges of the
    model's clamped coordinates, unbounded otherwise) and the free coordinates (C,) bool (all but
    the ones no virtual marker moves, `UNOBSERVED`, which stay where they start)."""
    clamped = model.clamped
    lo, hi = model.ranges.T
    free = np.array([n not in UNOBSERVED for n in model.coordinate_names])
    return np.where(clamped, lo, -np.inf), np.where(clamped, hi, np.inf), free


def marker_rms(fk: TorchKinematics, values: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """(T,) RMS distance between `markers` (T, M, 3) (NaN = unseen) and the model's markers at
    `values` (T, C), metres."""
    with torch.no_grad():
        pos = fk.markers(torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float64)).numpy()
    d2 = np.sum((pos - np.asarray(markers)) ** 2, -1)  # (T, M), NaN where unseen
    return np.sqrt(np.nanmean(d2, -1))


def fit_markers(fk: TorchKinematics, markers: np.ndarray, start: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                free: np.ndarray, iterations: int = 10, chunk: int = FIT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares marker fit from a starting pose, many frames at once: the coordinates that
    minimise the summed squared distance between the model's markers and `markers` (T, M, 3),
    metres, NaN where unseen (OpenSim IK's objective with unit marker weights), starting from
    `start` (T, C) SI. Only `free` (C,) coordinates move; each stays within [lower, upper] (C,)
    (-inf/inf for none). Levenberg-Marquardt with a damping per frame: each step is tried with the
    Jacobian at the trial pose, kept if it lowers that frame's error (the Jacobian then serves the
    next step) and undone otherwise (the damping raised); a coordinate at a bound that the gradient
    pushes beyond it is held for that step. Frames are independent and go `chunk` at a time.
    Returns the coordinates (T, C) and each frame's RMS marker distance (T,), metres."""
    start = np.ascontiguousarray(start, dtype=np.float64)
    if len(start) > chunk:
        parts = [fit_markers(fk, markers[i:i + chunk], start[i:i + chunk], lower, upper, free, iterations, chunk)
                 for i in range(0, len(start), chunk)]
        return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
    x = torch.as_tensor(np.ascontiguousarray(markers), dtype=_F64)
    seen = ~torch.isnan(x).any(-1)  # (T, M)
    x = torch.nan_to_num(x)
    weight = seen[..., None].to(_F64)  # (T, M, 1)
    cols = torch.as_tensor(np.flatnonzero(free))
    lo = torch.as_tensor(np.asarray(lower), dtype=_F64)[cols]
    hi = torch.as_tensor(np.asarray(upper), dtype=_F64)[cols]
    q = torch.as_tensor(start).clone()
    q[:, cols] = torch.minimum(torch.maximum(q[:, cols], lo), hi)
    T = q.shape[0]
    damping = torch.full((T,), 1e-3, dtype=_F64)

    def evaluate(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos, jac = fk.markers_jacobian(values)
        r = ((pos - x) * weight).reshape(T, -1)  # (T, 3M)
        j = (jac[..., cols] * weight[..., None]).reshape(T, -1, len(cols))  # (T, 3M, F)
        return r, j, (r**2).sum(1)

    r, j, cost = evaluate(q)
    for _ in range(iterations):
        grad = (j.transpose(1, 2) @ r[..., None])[..., 0]  # (T, F)
        qf = q[:, cols]
        held = ((qf <= lo) & (grad > 0)) | ((qf >= hi) & (grad < 0))
        jf = j * (~held)[:, None, :]
        a = jf.transpose(1, 2) @ jf  # (T, F, F)
        diag = torch.diagonal(a, dim1=1, dim2=2)
        system = a + torch.diag_embed(damping[:, None] * (diag + 1e-9) + held.to(_F64))
        step = -torch.linalg.solve(system, jf.transpose(1, 2) @ r[..., None])[..., 0]
        trial = q.clone()
        trial[:, cols] = torch.minimum(torch.maximum(qf + step, lo), hi)
        r_t, j_t, cost_t = evaluate(trial)
        better = cost_t < cost
        q = torch.where(better[:, None], trial, q)
        r = torch.where(better[:, None], r_t, r)
        j = torch.where(better[:, None, None], j_t, j)
        cost = torch.where(better, cost_t, cost)
        damping = torch.where(better, damping * 0.3, damping * 10.0).clamp(1e-9, 1e9)
    rms = torch.where(seen.any(1), torch.sqrt(cost / seen.sum(1).clamp(min=1)), torch.nan)  # NaN: nothing seen
    return q.numpy(), rms.numpy()
