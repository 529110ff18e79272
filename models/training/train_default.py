"""Train the default bundle's pose tokenizer and keypoint-conditioned masked transformer on CPU.

    python -m kinemesh.models.training.train_default --body var/models/body/anny_core.npz \
        --fit-keypoints 'var/cache/train/kp_*/keypoints.npz' --out models/weights/default

Everything is seeded: the synthetic data (`synth.generate`), the model initialisation and the
masks. Writes `pose_tokenizer.pt`, `genhmr_keypoints.pt` (state dicts) and `record.json` (command,
seeds, data sizes, steps, wall time, configs and the final validation metrics).
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from kinemesh.models.body.assets import load_body_model
from kinemesh.models.genhmr import TorchStepFn
from kinemesh.models.genhmr.inference import TorchDecoder, full_rotations, predict_bodies
from kinemesh.models.registry import create_model, model_config
from kinemesh.models.training import loops
from kinemesh.models.training.fit import fit_sequence, world_tracks
from kinemesh.models.training.metrics import BODY_METRIC_JOINTS, mpjpe_mm, pa_mpjpe_mm
from kinemesh.models.training.synth import SyntheticFrames, generate

NUM_SHAPE = 10
TOKENIZER = ("pose_tokenizer_small", {"joints": 21})
TRANSFORMER = ("genhmr_keypoints_small", {"dim": 128, "depth": 4, "heads": 4, "shape_dim": NUM_SHAPE,
                                          "dropout": 0.0})


def body_joints(layer, body6d: torch.Tensor, orient6d: torch.Tensor | None = None,
                shape: torch.Tensor | None = None) -> torch.Tensor:
    """Joints (B, 24, 3) of a body pose (B, 21, 6) [with root orientation (B, 6) and shape (B, S)]."""
    B = body6d.shape[0]
    orient6d = torch.tensor([1.0, 0, 0, 0, 1.0, 0]).expand(B, 6) if orient6d is None else orient6d
    rot = full_rotations(body6d, orient6d)  # (B, 24, 3, 3)
    shape = torch.zeros(B, layer.config.num_shape) if shape is None else shape
    return layer.skeleton(rot, shape, torch.zeros(B, 3))[0]


def train_tokenizer(layer, data: SyntheticFrames, val: SyntheticFrames, steps: int, batch: int, seed: int,
                    log) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    tok = create_model(TOKENIZER[0], **TOKENIZER[1])

    def joints_error(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (body_joints(layer, recon) - body_joints(layer, x)).abs().mean()

    loops.train_tokenizer(tok, data.body6d, joints_error, 10.0, steps, batch, seed, log)
    with torch.no_grad():
        ids, _ = tok.encode(val.body6d)
        recon = tok.decode_indices(ids)
        err = mpjpe_mm(body_joints(layer, recon)[:, list(BODY_METRIC_JOINTS)],
                       body_joints(layer, val.body6d)[:, list(BODY_METRIC_JOINTS)])
        used = int(torch.unique(tok.encode(data.body6d[:20000])[0]).numel())
    return tok, {"val_recon_mpjpe_mm": round(float(err.mean()), 2), "codes_used": used}


def train_transformer(layer, tok, data: SyntheticFrames, val: SyntheticFrames, steps: int, batch: int,
                      seed: int, log, geometry_weight: float = 10.0) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    model = create_model(TRANSFORMER[0], **TRANSFORMER[1])
    with torch.no_grad():
        ids_all = torch.cat([tok.encode(data.body6d[i:i + 8192])[0] for i in range(0, len(data), 8192)])

    def joints_error(body6d: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Root-relative joint error of decoded poses (B, 21, 6) against the rows `idx`, metres."""
        joints = body_joints(layer, body6d, data.orient6d[idx])
        return (joints - data.joints[idx] + data.joints[idx][:, :1] - joints[:, :1]).norm(dim=-1).mean()

    loops.train_masked_transformer(model, tok, ids_all, data.keypoints,
                                   {"shape": data.shape, "camera": data.camera, "orient": data.orient6d},
                                   joints_error, geometry_weight, steps, batch, seed, log)
    return model, evaluate(layer, model, tok, val)


@torch.no_grad()
def evaluate(layer, model, tok, val: SyntheticFrames, iterations: int = 5) -> dict:
    pred = predict_bodies(TorchStepFn(model), TorchDecoder(tok), val.keypoints, iterations=iterations)
    joints = body_joints(layer, pred.body6d, pred.orient6d, pred.shape)[:, list(BODY_METRIC_JOINTS)]
    gt = val.joints[:, list(BODY_METRIC_JOINTS)]
    return {"val_mpjpe_mm": round(float(mpjpe_mm(joints, gt).mean()), 2),
            "val_pa_mpjpe_mm": round(float(pa_mpjpe_mm(joints, gt).mean()), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--body", default="var/models/body/anny_core.npz")
    p.add_argument("--fit-keypoints", default="", help="glob of keypoints.npz artifacts of real clips to fit")
    p.add_argument("--out", default="models/weights/default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sequences", type=int, default=3000)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--tokenizer-steps", type=int, default=3000)
    p.add_argument("--transformer-steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    layer = load_body_model(a.body, num_shape=NUM_SHAPE)
    fitted, fit_report = [], []
    for path in sorted(glob.glob(a.fit_keypoints)) if a.fit_keypoints else []:
        for k, (world, vis) in enumerate(world_tracks(path)):
            angles, orient, rms = fit_sequence(layer, world, vis, seed=a.seed)
            fitted.append((angles, orient))
            fit_report.append({"file": str(Path(path).parent.name), "track": k, "frames": len(angles),
                               "rms_mm": round(rms * 1000, 1)})
            log(f"fitted {path} track {k}: {len(angles)} frames, rms {rms * 1000:.1f} mm")
    data = generate(layer, a.sequences, a.frames, seed=a.seed, num_shape=NUM_SHAPE, fitted=fitted)
    val = generate(layer, 64, 16, seed=a.seed + 1000, num_shape=NUM_SHAPE)  # held out: another seed
    log(f"data: {len(data)} training frames, {len(val)} validation frames")

    tok, tok_metrics = train_tokenizer(layer, data, val, a.tokenizer_steps, 512, a.seed, log)
    log(f"tokenizer: {tok_metrics}")
    torch.save(tok.state_dict(), out / "pose_tokenizer.pt")
    model, tr_metrics = train_transformer(layer, tok, data, val, a.transformer_steps, a.batch, a.seed, log)
    log(f"transformer: {tr_metrics}")
    torch.save(model.state_dict(), out / "genhmr_keypoints.pt")

    record = {
        "command": "python -m kinemesh.models.training.train_default " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": a.seed,
        "body_model": layer.config.name,
        "body_model_shape_components": NUM_SHAPE,
        "data": {"generator": "kinemesh.models.training.synth.generate", "sequences": a.sequences,
                 "frames_per_sequence": a.frames, "training_frames": len(data), "validation_frames": len(val),
                 "validation_seed": a.seed + 1000, "fitted_sequences": fit_report},
        "tokenizer": {"preset": TOKENIZER[0], "overrides": TOKENIZER[1], "steps": a.tokenizer_steps,
                      "batch": 512, "config": asdict(model_config(TOKENIZER[0], **TOKENIZER[1])), **tok_metrics},
        "transformer": {"preset": TRANSFORMER[0], "overrides": TRANSFORMER[1], "steps": a.transformer_steps,
                        "batch": a.batch, "config": asdict(model_config(TRANSFORMER[0], **TRANSFORMER[1])),
                        "decoding_iterations": 5, **tr_metrics},
        "wall_time_s": round(time.time() - started, 1),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "numpy": np.__version__,
    }
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
