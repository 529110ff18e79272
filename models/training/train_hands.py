"""Train the default hand model (MMHMR's method, keypoint-conditioned) on synthetic hands on CPU.

    python -m kinemesh.models.training.train_hands --out models/weights/hands

Data: `hands.synth.generate` on the Anny hand skeleton (models/weights/hands/hand_skeleton.json), seeds
0 (train) and 1 (held out). The tokenizer learns the 15 finger joint rotations (6D) through 64 tokens
(loss: 6D L1 plus the keypoints' error by forward kinematics); the masked transformer then learns the
tokens, the hand's orientation, size and weak-perspective camera from the 2D keypoints (masked-token
cross-entropy, plus the keypoints of the softly decoded pose). Writes `hand_tokenizer.pt`,
`hand_transformer.pt` and `record.json` (command, seeds, sizes, steps, time, configs and the held-out
PA-MPJPE of the 21 keypoints after 5 decoding iterations: `hand_pa_mpjpe_mm_synth`).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from kinemesh.models.genhmr import TorchStepFn
from kinemesh.models.genhmr.inference import TorchDecoder, predict_bodies
from kinemesh.models.hands.skeleton import HandSkeleton
from kinemesh.models.hands.synth import SyntheticHands, generate
from kinemesh.models.registry import create_model, model_config
from kinemesh.models.rotations import rot6d_to_matrix
from kinemesh.models.training import loops
from kinemesh.models.training.metrics import pa_mpjpe_mm

TOKENIZER = "hand_tokenizer_small"
TRANSFORMER = "mmhmr_hand_small"
SKELETON = Path(__file__).resolve().parents[1] / "weights" / "hands" / "hand_skeleton.json"


def hand_points(skeleton: HandSkeleton, finger6d: torch.Tensor, orient6d: torch.Tensor | None = None) -> torch.Tensor:
    """Keypoints (B, 21, 3) of finger rotations (B, 15, 6) [and the hand's orientation (B, 6)], unit size."""
    B = finger6d.shape[0]
    orient = torch.eye(3).expand(B, 1, 3, 3) if orient6d is None else rot6d_to_matrix(orient6d)[:, None]
    return skeleton(torch.cat([orient, rot6d_to_matrix(finger6d)], 1))


def train_tokenizer(skeleton, data: SyntheticHands, val: SyntheticHands, steps: int, batch: int, seed: int, log):
    torch.manual_seed(seed)
    tok = create_model(TOKENIZER)

    def points_error(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (hand_points(skeleton, recon) - hand_points(skeleton, x)).norm(dim=-1).mean()

    loops.train_tokenizer(tok, data.finger6d, points_error, 20.0, steps, batch, seed, log, label="keypoints")
    with torch.no_grad():
        recon = tok.decode_indices(tok.encode(val.finger6d)[0])
        err = (hand_points(skeleton, recon) - hand_points(skeleton, val.finger6d)).norm(dim=-1).mean(-1)
    return tok, {"val_recon_mm": round(float(err.mean()) * 1000, 2)}


def train_transformer(skeleton, tok, data: SyntheticHands, val: SyntheticHands, steps: int, batch: int, seed: int,
                      log, geometry_weight: float = 20.0, start: Path | None = None, peak_lr: float = 1e-3):
    """`start`: a transformer state dict to continue from (else a fresh model from `seed`)."""
    torch.manual_seed(seed)
    model = create_model(TRANSFORMER)
    if start is not None:
        model.load_state_dict(torch.load(start, weights_only=True))
    with torch.no_grad():
        ids_all = torch.cat([tok.encode(data.finger6d[i:i + 8192])[0] for i in range(0, len(data), 8192)])

    def points_error(finger6d: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Keypoint error of decoded poses (B, 15, 6) at unit size against the rows `idx`, metres."""
        points = hand_points(skeleton, finger6d, data.orient6d[idx])
        return (points - data.keypoints3d[idx] / data.scale[idx, None, None]).norm(dim=-1).mean()

    loops.train_masked_transformer(model, tok, ids_all, data.keypoints,
                                   {"shape": data.scale.log()[:, None], "camera": data.camera,
                                    "orient": data.orient6d}, points_error, geometry_weight, steps, batch, seed, log,
                                   peak_lr)
    return model, evaluate(skeleton, model, tok, val)


@torch.no_grad()
def evaluate(skeleton, model, tok, val: SyntheticHands, iterations: int = 5) -> dict:
    """PA-MPJPE (mm) of the 21 keypoints after `iterations` decoding steps, on `val`."""
    pred = predict_bodies(TorchStepFn(model), TorchDecoder(tok), val.keypoints, iterations=iterations)
    points = hand_points(skeleton, pred.body6d, pred.orient6d) * pred.shape.exp()[:, :1, None]
    err = pa_mpjpe_mm(points, val.keypoints3d)
    return {"hand_pa_mpjpe_mm_synth": round(float(err.mean()), 2),
            "hand_pa_mpjpe_mm_synth_median": round(float(err.median()), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("models/weights/hands"))
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--val", type=int, default=5_000)
    p.add_argument("--tokenizer-steps", type=int, default=3000)
    p.add_argument("--transformer-steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the weights in --out: keep the tokenizer, train "
                   "the transformer --transformer-steps more at --peak-lr (seed + 1 for the batches)")
    p.add_argument("--peak-lr", type=float, default=1e-3)
    p.add_argument("--skeleton", type=Path, default=SKELETON, help="the hand skeleton file: Anny's (default) or "
                   "one written from an operator's MANO file (`python -m kinemesh.models.hands.mano_hand`); "
                   "copied into --out beside the weights")
    a = p.parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    skeleton = HandSkeleton.from_file(a.skeleton)
    data, val = generate(skeleton, a.samples, a.seed), generate(skeleton, a.val, a.seed + 1)
    log(f"data: {len(data)} train, {len(val)} held out")
    previous = json.loads((a.out / "record.json").read_text()) if a.resume else None
    if previous is not None:
        tok = create_model(TOKENIZER)
        tok.load_state_dict(torch.load(a.out / "hand_tokenizer.pt", weights_only=True))
        tok.eval()
        tok_metrics = {k: v for k, v in previous["tokenizer"].items() if k not in ("preset", "overrides", "config")}
    else:
        tok, tok_metrics = train_tokenizer(skeleton, data, val, a.tokenizer_steps, a.batch * 2, a.seed, log)
    log(f"tokenizer: {tok_metrics}")
    model, metrics = train_transformer(skeleton, tok, data, val, a.transformer_steps, a.batch,
                                       a.seed + (1 if previous else 0), log,
                                       start=a.out / "hand_transformer.pt" if previous else None, peak_lr=a.peak_lr)
    log(f"transformer: {metrics}")
    a.out.mkdir(parents=True, exist_ok=True)
    if a.skeleton.resolve() != (a.out / "hand_skeleton.json").resolve():
        shutil.copy2(a.skeleton, a.out / "hand_skeleton.json")  # the weights pose this skeleton, and travel with it
    torch.save(tok.state_dict(), a.out / "hand_tokenizer.pt")
    torch.save(model.state_dict(), a.out / "hand_transformer.pt")
    command = "python -m kinemesh.models.training.train_hands " + " ".join(argv or sys.argv[1:])
    record = {
        "command": command if previous is None else f"{previous['command']} && {command}",
        "seeds": {"train_data": a.seed, "held_out_data": a.seed + 1, "init": a.seed},
        "samples": a.samples, "held_out": a.val, "batch": a.batch,
        "tokenizer": {"preset": TOKENIZER, "overrides": {}, "config": asdict(model_config(TOKENIZER)),
                      "steps": a.tokenizer_steps, **tok_metrics},
        "transformer": {"preset": TRANSFORMER, "overrides": {}, "config": asdict(model_config(TRANSFORMER)),
                        "steps": a.transformer_steps + (previous["transformer"]["steps"] if previous else 0),
                        **({"stages": [previous["transformer"], {"steps": a.transformer_steps, "peak_lr": a.peak_lr,
                                                                 "batch_seed": a.seed + 1, **metrics}]}
                           if previous else {}), **metrics},
        "skeleton": "hand_skeleton.json",
        "wall_seconds": round(time.time() - t0 + (previous["wall_seconds"] if previous else 0), 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        **metrics,
    }
    (a.out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
