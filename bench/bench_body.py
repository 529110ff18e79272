"""Body-stage accuracy and speed (issue 3): `python bench/bench_body.py` or as part of `make bench`.

Accuracy
  synthetic  a held-out set from `kinemesh.models.training.synth.generate` with a seed training never
             used (so unseen poses, shapes, cameras and noise): MPJPE / PA-MPJPE of the 22 body joints
             in mm, before and after refinement, decoded through the bundle's ONNX graphs.
  crossview  Pose2Sim Demo_SinglePerson's four cameras film one motion; each view runs on its own
             (keypoints -> body), the views are aligned in time (the lag that best agrees, searched
             within +-8 frames) and compared pairwise: PA-MPJPE of the 3D joints and the mean angle
             between body-frame joint rotations, with and without refinement.
  2D fit     mean reprojection error over the person's bounding-box height, on the same real clips.
Speed
  the decoding step's throughput through ONNX Runtime over PyTorch eager (batch 1, 8, 32, one run),
  refinement ms per frame on a 300-frame track, and the body stage against the keypoint stage on
  a 10 s clip (the demo clip played forwards and backwards).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kinemesh.models.export.bundle import load_trained  # noqa: E402
from kinemesh.models.genhmr import TorchStepFn  # noqa: E402
from kinemesh.models.genhmr.inference import predict_bodies  # noqa: E402
from kinemesh.models.genhmr.refine import RefineConfig, refine_track  # noqa: E402
from kinemesh.models.training.metrics import BODY_METRIC_JOINTS, mpjpe_mm, pa_mpjpe_mm  # noqa: E402
from kinemesh.models.training.synth import generate  # noqa: E402
from kinemesh.models.training.train_default import body_joints  # noqa: E402
from kinemesh.services.common.media import MediaLimits  # noqa: E402

VAR = REPO / "var"
NO_LIMITS = MediaLimits(max_duration_s=1e9, max_pixels=1 << 40, max_side=1 << 20)  # benchmarks decode any clip
HELD_OUT_SEED = 424242  # training used seeds 0 (train) and 1000 (validation)

DESCRIPTIONS = {
    "synth_mpjpe_mm_before": "held-out synthetic set (24 tracks x 30 frames, seed 424242, realistic 2D noise, "
                             "occlusions), 22 body joints, root-aligned, decoded through ONNX Runtime (5 iterations)",
    "synth_mpjpe_mm_after": "the same after refinement (default config: 20 steps; simulated world landmarks with MediaPipe-sized errors)",
    "synth_pa_mpjpe_mm_before": "the same, Procrustes-aligned, before refinement",
    "synth_pa_mpjpe_mm_after": "the same, Procrustes-aligned, after refinement",
    "crossview_pa_mpjpe_mm": "Demo_SinglePerson, 4 views each processed alone, pairwise PA-MPJPE of the 24 joints "
                             "after time alignment, with refinement (mean of 6 pairs)",
    "crossview_pa_mpjpe_mm_unrefined": "the same without refinement",
    "crossview_angle_deg": "the same views: mean angle between the 21 body-frame joint rotations, with refinement",
    "crossview_angle_deg_unrefined": "the same without refinement",
    "reproj_err_bbox_frac_before": "Demo_SinglePerson 4 views: mean 2D error of confident landmarks / bbox height, "
                                   "before refinement",
    "reproj_err_bbox_frac_after": "the same after refinement",
    "ort_vs_eager_b1": "decoding-step throughput, ONNX Runtime / PyTorch eager, batch 1 (same run)",
    "ort_vs_eager_b8": "the same, batch 8",
    "ort_vs_eager_b32": "the same, batch 32",
    "refine_ms_per_frame": "refinement wall time per frame, one 300-frame track, default steps",
    "body_path_fps": "body stage (tokens via ONNX Runtime, refinement, joints, GLB + NPZ mesh files) frames/s on "
                     "a 10 s clip (Demo_SinglePerson cam01 at 30 fps played forwards and backwards, 1080x1920)",
    "body_vs_keypoints_time": "body stage time / keypoint stage time on that clip, same run (target <= 0.5)",
    "body_vs_keypoints_time_no_mesh_files": "the same without writing the mesh files",
}


def synthetic(stage, layer) -> dict[str, float]:
    data = generate(layer, 24, 30, seed=HELD_OUT_SEED, num_shape=layer.config.num_shape)
    gt = data.joints[:, list(BODY_METRIC_JOINTS)]
    before, after = [], []
    for s in range(24):
        idx = (data.sequence == s).nonzero().squeeze(1)
        kp = data.keypoints[idx]
        init = predict_bodies(stage.step_fn, stage.decoder_fn, kp, stage.iterations)
        res = refine_track(layer, stage.tokenizer.decoder, stage.tokenizer.codebook.detach(), init, kp,
                           data.world[idx], stage.refine_config)
        for params, sink in ((init, before), (res.params, after)):
            with torch.no_grad():
                joints = body_joints(layer, params.body6d, params.orient6d, params.shape)
            sink.append(joints[:, list(BODY_METRIC_JOINTS)])
    b, a = torch.cat(before), torch.cat(after)
    return {
        "synth_mpjpe_mm_before": round(float(mpjpe_mm(b, gt).mean()), 1),
        "synth_mpjpe_mm_after": round(float(mpjpe_mm(a, gt).mean()), 1),
        "synth_pa_mpjpe_mm_before": round(float(pa_mpjpe_mm(b, gt).mean()), 1),
        "synth_pa_mpjpe_mm_after": round(float(pa_mpjpe_mm(a, gt).mean()), 1),
    }


def _geodesic_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (...) in degrees between rotation matrices (..., 3, 3)."""
    rel = np.einsum("...ji,...jk->...ik", a, b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _pair(a, b, max_lag: int = 8) -> tuple[float, float, int]:
    """PA-MPJPE (mm) and joint-angle disagreement (deg) of two views' single tracks at their best lag."""
    best = None
    for lag in range(-max_lag, max_lag + 1):
        ia = {int(f): k for k, f in enumerate(a.frame_index)}
        pairs = [(ia[int(f) + lag], k) for k, f in enumerate(b.frame_index) if int(f) + lag in ia]
        if len(pairs) < 10:
            continue
        ka, kb = map(list, zip(*pairs, strict=True))
        err = float(pa_mpjpe_mm(torch.from_numpy(a.joints[ka]), torch.from_numpy(b.joints[kb])).mean())
        if best is None or err < best[0]:
            ang = float(_geodesic_deg(a.rotations[ka, 1:22], b.rotations[kb, 1:22]).mean())
            best = (err, ang, lag)
    assert best is not None, "the views share too few frames"
    return best


def real_clips(clips: dict[str, Path], model_dir: Path, stage) -> dict[str, float]:
    from kinemesh.services.worker.stages.base import NullContext
    from kinemesh.services.worker.stages.decode import DecodeStage
    from kinemesh.services.worker.stages.keypoints import KeypointStage

    views = {}
    with KeypointStage(model_dir, max_people=1) as kps:
        for cam in ("single_cam01", "single_cam02", "single_cam03", "single_cam04"):
            views[cam] = kps.run(DecodeStage().open(clips[cam], 30.0, limits=NO_LIMITS), NullContext())
    out: dict[str, float] = {}
    steps = stage.refine_config.steps
    for label, n in (("_unrefined", 0), ("", steps)):
        stage.refine_config = RefineConfig(steps=n)
        bodies = {cam: stage.run(t, NullContext(), meshes=False) for cam, t in views.items()}
        stage.refine_config = RefineConfig(steps=steps)
        tracks = {cam: max(b.tracks, key=lambda t: len(t.frame_index)) for cam, b in bodies.items()}
        stats = [_pair(tracks[x], tracks[y]) for x, y in itertools.combinations(sorted(tracks), 2)]
        out[f"crossview_pa_mpjpe_mm{label}"] = round(float(np.mean([s[0] for s in stats])), 1)
        out[f"crossview_angle_deg{label}"] = round(float(np.mean([s[1] for s in stats])), 1)
        print(f"crossview{label or '_refined'}: pairs (mm, deg, lag) {[tuple(round(v, 1) for v in s) for s in stats]}")
        frac = np.concatenate([t.reproj_after_px / np.maximum(t.bbox_height_px, 1) for t in tracks.values()])
        frac_before = np.concatenate([t.reproj_before_px / np.maximum(t.bbox_height_px, 1) for t in tracks.values()])
        if n:
            out["reproj_err_bbox_frac_after"] = round(float(frac.mean()), 4)
            out["reproj_err_bbox_frac_before"] = round(float(frac_before.mean()), 4)
    return out


def _throughput(fn, batch: int, seconds: float = 1.5) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def speed(stage, layer, clips: dict[str, Path], model_dir: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    _, model, _ = load_trained(REPO / "models" / "weights" / "default")
    eager = TorchStepFn(model)
    cfg = model.cfg
    for b in (1, 8, 32):
        ids = torch.randint(0, cfg.codebook_size + 1, (b, cfg.num_tokens))
        kp = torch.rand(b, 33, 3)
        e = _throughput(lambda: eager(ids, kp, None), b)  # noqa: B023
        o = _throughput(lambda: stage.step_fn(ids, kp, None), b)  # noqa: B023
        out[f"ort_vs_eager_b{b}"] = round(o / e, 2)
        print(f"decode step batch {b}: eager {e:.0f}/s, ORT {o:.0f}/s")
    data = generate(layer, 1, 300, seed=HELD_OUT_SEED + 1, num_shape=layer.config.num_shape)
    init = predict_bodies(stage.step_fn, stage.decoder_fn, data.keypoints, stage.iterations)
    args = (layer, stage.tokenizer.decoder, stage.tokenizer.codebook.detach(), init, data.keypoints, data.world)
    refine_track(*args, RefineConfig(steps=2))  # warm up
    t0 = time.perf_counter()
    refine_track(*args, stage.refine_config)
    out["refine_ms_per_frame"] = round((time.perf_counter() - t0) * 1000 / 300, 2)

    from kinemesh.services.worker.stages.base import DecodedVideo, NullContext
    from kinemesh.services.worker.stages.decode import DecodeStage
    from kinemesh.services.worker.stages.keypoints import KeypointStage

    video = DecodeStage().open(clips["single_cam01"], 30.0, limits=NO_LIMITS)
    frames = [b for b in video.batches()]
    images = np.concatenate([b.images for b in frames])  # (50, H, W, 3)
    loop = np.concatenate([images, images[::-1]] * 3)[:300]  # 10 s at 30 fps
    from kinemesh.services.worker.stages.base import FrameBatch

    batches = [FrameBatch(indices=np.arange(i, min(i + 16, 300)), timestamps_s=np.arange(i, min(i + 16, 300)) / 30,
                          images=loop[i:i + 16]) for i in range(0, 300, 16)]
    cached = DecodedVideo(meta=video.meta, batches=lambda: iter(batches))
    with KeypointStage(model_dir, max_people=1) as kps:
        t0 = time.perf_counter()
        tracks = kps.run(cached, NullContext())
        t_kp = time.perf_counter() - t0
    stage.run(tracks, NullContext(), meshes=False)  # warm
    t0 = time.perf_counter()
    res = stage.run(tracks, NullContext(), meshes=True)
    t_body = time.perf_counter() - t0
    t0 = time.perf_counter()
    stage.run(tracks, NullContext(), meshes=False)
    t_nomesh = time.perf_counter() - t0
    n = sum(len(t.frame_index) for t in res.tracks)
    out["body_path_fps"] = round(n / t_body, 1)
    out["body_vs_keypoints_time"] = round(t_body / t_kp, 3)
    out["body_vs_keypoints_time_no_mesh_files"] = round(t_nomesh / t_kp, 3)
    print(f"10 s clip: keypoints {t_kp:.2f} s, body {t_body:.2f} s ({t_nomesh:.2f} s without mesh files) "
          f"for {n} person-frames")
    return out


def body_figures(model_dir: Path, clips: dict[str, Path]) -> dict[str, float]:
    from kinemesh.services.worker.stages.body import BodyStage

    torch.manual_seed(0)
    stage = BodyStage(VAR / "models" / "bundle" / "default")
    layer = stage.layer
    results: dict[str, float] = {}
    print("body: synthetic held-out set ...", flush=True)
    results.update(synthetic(stage, layer))
    print("body: real clips, four views ...", flush=True)
    results.update(real_clips(clips, model_dir, stage))
    print("body: speed ...", flush=True)
    results.update(speed(stage, layer, clips, model_dir))
    return results


def main() -> int:
    from bench.run import write_markdown
    from kinemesh.models.assets.pose2sim_clips import ensure_demo_clips

    clips = ensure_demo_clips(VAR / "cache" / "pose2sim")
    results = body_figures(VAR / "models", clips)
    path = REPO / "bench" / "results.json"
    merged = {**json.loads(path.read_text()), **results} if path.exists() else results
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    write_markdown(merged, "make bench-body` (`python bench/bench_body.py`, body keys only, merged into the last "
                           "`make bench")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
