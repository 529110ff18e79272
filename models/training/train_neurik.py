"""Train NeurIK on synthetic data (`kinemesh.models.biomech.neurik_data`) and report it against
OpenSim IK on held-out sequences.

    python -m kinemesh.models.training.train_neurik --out models/weights/neurik

Seeds: data 0 (train) and 1000 (held out), torch 0. The generated data is cached under
var/cache/neurik (it takes minutes: every motion is tracked by OpenSim IK). The record (command,
seeds, sizes, steps, held-out RMSE per coordinate against OpenSim IK) goes next to the weights.

Shape legend: P sequences, T frames, M markers, C joint coordinates, K scaled bodies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kinemesh.models.assets.opensim_models import ensure_opensim_model
from kinemesh.models.biomech.neurik import (
    PELVIS_COORDINATES,
    PELVIS_MARKERS,
    UNOBSERVED,
    NeurIK,
    NeurIKConfig,
    angle_rmse_deg,
    apply_pelvis_residual,
    in_pelvis_frame,
    marker_features,
    marker_parents,
    pelvis_pose,
    pelvis_residual,
    run_windows,
    torch_window_fn,
)
from kinemesh.models.biomech.neurik_data import DATA_VERSION, generate
from kinemesh.models.biomech.opensim_model import OsimModel
from kinemesh.models.biomech.virtual_markers import study_markers
from kinemesh.models.body.assets import load_body_model


def joint_indices(names: list[str]) -> list[int]:
    """The coordinates NeurIK predicts: all but the pelvis's six and the UNOBSERVED ones."""
    return [i for i, n in enumerate(names) if n not in PELVIS_COORDINATES and n not in UNOBSERVED]


@dataclass
class Prepared:
    features: np.ndarray  # (P, T, M, 4) network inputs
    targets: np.ndarray  # (P, T, C) SI, NeurIK's coordinates
    coordinates: np.ndarray  # (P, T, 40) SI, every coordinate (labels)
    scales: np.ndarray  # (P, K)
    pelvis: np.ndarray  # (P, T, 12) the pelvis markers' rigid fit: rotation (9, row-major) and origin (3)
    source: np.ndarray  # (P,) "body" / "fk"
    marker_names: list[str]
    bodies: list[str]
    rejected: int  # motions the generator dropped as not well-posed

    def fit(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """Sequence p's rigid pelvis fit: rotations (T, 3, 3) and origins (T, 3)."""
        pose = self.pelvis[p].astype(np.float64)
        return pose[:, :9].reshape(-1, 3, 3), pose[:, 9:]


def prepared_data(model: OsimModel, layer, cache_dir: Path, subjects: int, sequences: int, frames: int,
                  seed: int) -> Prepared:
    """Generate (or load from `cache_dir`) a data set and turn it into network inputs."""
    cache = cache_dir / f"v{DATA_VERSION}_seed{seed}_{subjects}x{sequences}x{frames}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return Prepared(z["features"], z["targets"], z["coordinates"], z["scales"], z["pelvis"], z["source"].astype(str),
                        [str(n) for n in z["marker_names"]], [str(b) for b in z["bodies"]], int(z["rejected"]))
    rest = layer(torch.eye(3).expand(1, layer.config.num_joints, 3, 3), torch.zeros(1, layer.config.num_shape),
                 torch.zeros(1, 3))
    vm = study_markers(rest.vertices[0].detach().numpy(), rest.joints[0].detach().numpy(), layer.config.joint_names)
    folder = cache.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    data = generate(model, layer, vm, subjects, sequences, frames, seed=seed, work_dir=folder)
    pelvis_idx = [data.marker_names.index(n) for n in PELVIS_MARKERS]
    local = {s: OsimModel(folder / f"subject{s}.osim").marker_locations(PELVIS_MARKERS) for s in set(data.subject)}
    feats, poses = [], []
    for p in range(len(data.markers)):
        R, origin = pelvis_pose(data.markers[p][:, pelvis_idx].astype(np.float64), local[int(data.subject[p])])
        feats.append(marker_features(in_pelvis_frame(data.markers[p].astype(np.float64), R, origin)))
        poses.append(np.concatenate([R.reshape(-1, 9), origin], 1))
    out = Prepared(np.stack(feats), data.coordinates[:, :, joint_indices(data.coordinate_names)],
                   data.coordinates, data.scale_factors, np.stack(poses).astype(np.float32), np.asarray(data.kind),
                   data.marker_names, data.bodies, data.rejected)
    np.savez_compressed(cache, **{k: np.asarray(v) for k, v in asdict(out).items()})
    return out


def pelvis_targets(data: Prepared, names: list[str]) -> np.ndarray:
    """(P, T, 6) what turns each frame's rigid pelvis fit into OpenSim IK's pelvis (`pelvis_residual`)."""
    idx = [names.index(n) for n in PELVIS_COORDINATES]
    return np.stack([pelvis_residual(*data.fit(p), data.coordinates[p][:, idx].astype(np.float64))
                     for p in range(len(data.features))]).astype(np.float32)


def evaluate(net: NeurIK, data: Prepared, names: list[str]) -> dict[str, np.ndarray]:
    """Held-out RMSE in degrees against the labels (OpenSim IK for the "body" source), per source:
    the C joint coordinates, then pelvis tilt, list and rotation."""
    net.eval()
    run = torch_window_fn(net)
    pelvis_idx = [names.index(n) for n in PELVIS_COORDINATES[:3]]
    preds = []
    for p in range(len(data.features)):
        coords, residual = run_windows(run, data.features[p], net.cfg.window)
        pelvis = apply_pelvis_residual(*data.fit(p), residual)
        preds.append(np.concatenate([coords, pelvis[:, :3]], 1))
    preds = np.stack(preds)
    truth = np.concatenate([data.targets, data.coordinates[..., pelvis_idx]], -1)
    out = {}
    for source in ("body", "fk"):
        sel = data.source == source
        if sel.any():
            out[source] = angle_rmse_deg(preds[sel], truth[sel], wrap=True)
    net.train()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kinemesh.models.training.train_neurik")
    ap.add_argument("--out", type=Path, default=Path("models/weights/neurik"))
    ap.add_argument("--var", type=Path, default=Path("var"))
    ap.add_argument("--cache-dir", type=Path, default=None, help="generated data (default: VAR/cache/neurik)")
    ap.add_argument("--subjects", type=int, default=48)
    ap.add_argument("--sequences", type=int, default=10)
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--noise-m", type=float, default=0.0005, help="marker noise added to every training window")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    osim_file, markers_file = ensure_opensim_model(args.var / "models" / "opensim", args.var / "cache" / "pose2sim")
    model = OsimModel(osim_file, markers_file)
    layer = load_body_model(args.var / "models" / "body" / "anny_core.npz", num_shape=10)
    cache = args.cache_dir or args.var / "cache" / "neurik"
    train = prepared_data(model, layer, cache, args.subjects, args.sequences, args.frames, seed=0)
    val = prepared_data(model, layer, cache, max(2, args.subjects // 6), 4, args.frames, seed=1000)
    t_data = time.perf_counter() - t0
    print(f"data: {len(train.features)} + {len(val.features)} sequences in {t_data:.0f} s", flush=True)
    joints = joint_indices(model.coordinate_names)
    names = [model.coordinate_names[i] for i in joints]
    reported = [*names, *PELVIS_COORDINATES[:3]]
    lower, upper = torch.from_numpy(model.ranges[joints]).T  # (C,) each
    cfg = NeurIKConfig(markers=train.features.shape[2], coordinates=len(joints), bodies=len(train.bodies),
                       window=min(NeurIKConfig.window, args.frames), parents=marker_parents(train.marker_names))
    net = NeurIK(cfg, lower, upper)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    rng = np.random.default_rng(0)
    W = cfg.window
    x_tr, y_tr = train.features, train.targets
    r_tr = pelvis_targets(train, model.coordinate_names)
    r_scale = torch.tensor([1.0] * 3 + [5.0] * 3)  # 1 rad ~ 5 m: 1 degree ~ 3.5 mm
    for step in range(args.steps):
        seq = rng.integers(len(x_tr), size=args.batch)
        start = rng.integers(args.frames - W + 1, size=args.batch)
        xb = np.stack([x_tr[s, a:a + W] for s, a in zip(seq, start, strict=True)])  # (B, T, M, 4)
        xb[..., :3] += rng.normal(0.0, args.noise_m, xb[..., :3].shape).astype(np.float32) * xb[..., 3:]
        yb = torch.from_numpy(np.stack([y_tr[s, a:a + W] for s, a in zip(seq, start, strict=True)]))
        rb = torch.from_numpy(np.stack([r_tr[s, a:a + W] for s, a in zip(seq, start, strict=True)]))
        coords, pelvis, scales = net(torch.from_numpy(xb))
        loss = (torch.nn.functional.smooth_l1_loss(coords, yb, beta=0.01)
                + torch.nn.functional.smooth_l1_loss(pelvis * r_scale, rb * r_scale, beta=0.01)
                + 0.2 * (scales - torch.from_numpy(train.scales[seq])).abs().mean())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 500 == 0 or step == args.steps - 1:
            rm = evaluate(net, val, model.coordinate_names)
            print(f"step {step}: loss {loss.item():.4f}, held-out RMSE (deg) "
                  + ", ".join(f"{k} {v.mean():.2f} (max {reported[int(v.argmax())]} {v.max():.1f})"
                              for k, v in rm.items()), flush=True)
    net.eval()
    rmse = evaluate(net, val, model.coordinate_names)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.__dict__, "state_dict": net.state_dict(), "coordinate_names": names,
                "marker_names": train.marker_names, "bodies": train.bodies}, args.out / "neurik.pt")
    record = {
        "command": "python -m kinemesh.models.training.train_neurik " + " ".join(argv or sys.argv[1:]),
        "seeds": {"train_data": 0, "held_out_data": 1000, "torch": 0, "batches": 0},
        "data": {"train_sequences": int(len(x_tr)), "held_out_sequences": int(len(val.features)),
                 "motions_rejected_as_ill_posed": {"train": train.rejected, "held_out": val.rejected},
                 "frames": args.frames, "subjects": args.subjects, "sequences_per_subject": args.sequences,
                 "sources": "body (the body model's virtual markers, OpenSim IK labels) and fk (drifted "
                            "coordinates' forward kinematics, 1 mm noise, occlusions), one of each per motion"},
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "noise_m": args.noise_m, "config": cfg.__dict__,
        "held_out_rmse_deg_mean": {k: round(float(v.mean()), 3) for k, v in rmse.items()},
        "held_out_rmse_deg": {k: {n: round(float(x), 3) for n, x in zip(reported, v, strict=True)}
                              for k, v in rmse.items()},
        "data_seconds": round(t_data, 1), "seconds": round(time.perf_counter() - t0, 1),
    }
    (args.out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("held_out_rmse_deg_mean", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
