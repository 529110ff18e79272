"""Train NeurIK on synthetic data (`kinemesh.models.biomech.neurik_data`) and report it against
OpenSim IK on held-out sequences.

    python -m kinemesh.models.training.train_neurik --out models/weights/neurik --steps 3000

Seeds: data 0 (train) and 1000 (held out), torch 0. The record (command, seeds, sizes, steps,
final metrics) goes next to the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kinemesh.models.assets.opensim_models import ensure_opensim_model
from kinemesh.models.biomech.neurik import (
    PELVIS_COORDINATES,
    PELVIS_MARKERS,
    NeurIK,
    NeurIKConfig,
    angle_rmse_deg,
    in_pelvis_frame,
    marker_features,
    pelvis_pose,
    windows,
)
from kinemesh.models.biomech.neurik_data import NeurIKSequences, generate
from kinemesh.models.biomech.opensim_model import OsimModel
from kinemesh.models.biomech.virtual_markers import study_markers
from kinemesh.models.body.assets import load_body_model


def joint_indices(names: list[str]) -> list[int]:
    return [i for i, n in enumerate(names) if n not in PELVIS_COORDINATES]


def prepare(data: NeurIKSequences, subject_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network inputs (P, T, M, 4), joint-coordinate targets (P, T, C) and pelvis poses (P, T, 6)."""
    locals_: dict[int, np.ndarray] = {}
    pelvis_idx = [data.marker_names.index(n) for n in PELVIS_MARKERS]
    feats, poses = [], []
    for p in range(len(data.markers)):
        s = int(data.subject[p])
        if s not in locals_:
            locals_[s] = OsimModel(subject_dir / f"subject{s}.osim").marker_locations(PELVIS_MARKERS)
        R, origin = pelvis_pose(data.markers[p][:, pelvis_idx].astype(np.float64), locals_[s])
        feats.append(marker_features(in_pelvis_frame(data.markers[p].astype(np.float64), R, origin)))
        poses.append(np.concatenate([R.reshape(-1, 9), origin], 1))
    targets = data.coordinates[:, :, joint_indices(data.coordinate_names)]
    return np.stack(feats), targets.astype(np.float32), np.stack(poses)


def predict(net: NeurIK, feats: np.ndarray) -> np.ndarray:
    """Joint coordinates (P, T, C) for inputs (P, T, M, 4), window by window, overlaps averaged."""
    P, T = feats.shape[:2]
    out = np.zeros((P, T, net.cfg.coordinates))
    count = np.zeros((1, T, 1))
    with torch.no_grad():
        for sl in windows(T, net.cfg.window):
            coords, _ = net(torch.from_numpy(feats[:, sl]))
            out[:, sl] += coords.numpy()
            count[:, sl] += 1
    return out / count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kinemesh.models.training.train_neurik")
    ap.add_argument("--out", type=Path, default=Path("models/weights/neurik"))
    ap.add_argument("--var", type=Path, default=Path("var"))
    ap.add_argument("--subjects", type=int, default=24)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    osim_file, markers_file = ensure_opensim_model(args.var / "models" / "opensim", args.var / "cache" / "pose2sim")
    model = OsimModel(osim_file, markers_file)
    layer = load_body_model(args.var / "models" / "body" / "anny_core.npz", num_shape=10)
    rest = layer(torch.eye(3).expand(1, 24, 3, 3), torch.zeros(1, 10), torch.zeros(1, 3))
    vm = study_markers(rest.vertices[0].detach().numpy(), rest.joints[0].detach().numpy(), layer.config.joint_names)
    with tempfile.TemporaryDirectory() as tmp:
        train_dir, val_dir = Path(tmp) / "train", Path(tmp) / "val"
        train_dir.mkdir()
        val_dir.mkdir()
        train = generate(model, layer, vm, args.subjects, args.sequences, args.frames, seed=0, work_dir=train_dir)
        val = generate(model, layer, vm, max(2, args.subjects // 4), 4, args.frames, seed=1000, work_dir=val_dir)
        print(f"data: {train.markers.shape[0]} + {val.markers.shape[0]} sequences in {time.perf_counter() - t0:.0f} s",
              flush=True)
        x_tr, y_tr, _ = prepare(train, train_dir)
        x_va, y_va, _ = prepare(val, val_dir)
        joints = joint_indices(model.coordinate_names)
        lower, upper = torch.from_numpy(model.ranges[joints]).T  # (C,) each
        cfg = NeurIKConfig(markers=x_tr.shape[2], coordinates=len(joints), bodies=len(train.bodies))
        net = NeurIK(cfg, lower, upper)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.steps, pct_start=0.1)
        rng = np.random.default_rng(0)
        W = cfg.window
        for step in range(args.steps):
            seq = rng.integers(len(x_tr), size=args.batch)
            start = rng.integers(args.frames - W + 1, size=args.batch)
            xb = torch.from_numpy(np.stack([x_tr[s, a:a + W] for s, a in zip(seq, start, strict=True)]))
            yb = torch.from_numpy(np.stack([y_tr[s, a:a + W] for s, a in zip(seq, start, strict=True)]))
            sb = torch.from_numpy(train.scale_factors[seq])
            coords, scales = net(xb)
            loss = torch.nn.functional.smooth_l1_loss(coords, yb, beta=0.02) + 0.5 * (scales - sb).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 250 == 0 or step == args.steps - 1:
                rmse = angle_rmse_deg(predict(net, x_va), y_va)
                print(f"step {step}: loss {loss.item():.4f}, held-out RMSE {rmse.mean():.2f} deg", flush=True)
        net.eval()
        rmse = angle_rmse_deg(predict(net, x_va), y_va)
        names = [model.coordinate_names[i] for i in joints]
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.__dict__, "state_dict": net.state_dict(), "coordinate_names": names,
                "marker_names": train.marker_names, "bodies": train.bodies}, args.out / "neurik.pt")
    record = {
        "command": "python -m kinemesh.models.training.train_neurik " + " ".join(argv or sys.argv[1:]),
        "seeds": {"train_data": 0, "held_out_data": 1000, "torch": 0},
        "data": {"train_sequences": int(len(x_tr)), "held_out_sequences": int(len(x_va)), "frames": args.frames,
                 "subjects": args.subjects},
        "steps": args.steps, "batch": args.batch, "config": cfg.__dict__,
        "held_out_rmse_deg_mean": round(float(rmse.mean()), 3),
        "held_out_rmse_deg": {n: round(float(v), 3) for n, v in zip(names, rmse, strict=True)},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (args.out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("held_out_rmse_deg_mean", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
