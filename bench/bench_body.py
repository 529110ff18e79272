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
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kinemesh.models.assets.pose2sim_clips import SINGLE_PERSON_LAGS_60FPS, demo_calibration  # noqa: E402
from kinemesh.models.camera import box_intrinsics  # noqa: E402
from kinemesh.models.export.bundle import load_trained  # noqa: E402
from kinemesh.models.genhmr import TorchStepFn  # noqa: E402
from kinemesh.models.genhmr.inference import predict_bodies, predict_track  # noqa: E402
from kinemesh.models.genhmr.refine import RefineConfig, bone_lengths, refine_track  # noqa: E402
from kinemesh.models.training.metrics import BODY_METRIC_JOINTS, mpjpe_mm, pa_mpjpe_mm  # noqa: E402
from kinemesh.models.training.synth import FOCAL_PX, generate  # noqa: E402
from kinemesh.models.training.train_default import body_joints  # noqa: E402
from kinemesh.services.common.media import MediaLimits  # noqa: E402

VAR = REPO / "var"
NO_LIMITS = MediaLimits(max_duration_s=1e9, max_pixels=1 << 40, max_side=1 << 20)  # benchmarks decode any clip
HELD_OUT_SEED = 424242  # training used seeds 0 (train) and 1000 (validation)
LAGS_30FPS = {cam: lag // 2 for cam, lag in SINGLE_PERSON_LAGS_60FPS.items()}  # the clips are sampled at 30 fps
SYNTH_FPS = 30.0  # the held-out sequences' frame rate (the worker decodes keyframes at 15 Hz of it)

DESCRIPTIONS = {
    "synth_mpjpe_mm_before": "held-out synthetic set (24 tracks x 30 frames at 30 fps, seed 424242, realistic 2D "
                             "noise, occlusions), 22 body joints, root-aligned, every frame decoded through ONNX "
                             "Runtime (5 iterations), no refinement",
    "synth_mpjpe_mm_after": "the same as the worker does it: keyframes decoded at 15 Hz, refinement (20 steps, "
                            "pinhole camera, simulated world landmarks with MediaPipe-sized errors)",
    "synth_pa_mpjpe_mm_before": "the same, Procrustes-aligned, before refinement",
    "synth_pa_mpjpe_mm_after": "the same, Procrustes-aligned, after refinement",
    "crossview_pa_mpjpe_mm": "Demo_SinglePerson, 4 views each processed alone, pairwise PA-MPJPE of the 24 joints "
                             "after time alignment, with refinement (mean of 6 pairs; in the second view's size)",
    "crossview_pa_mpjpe_mm_unrefined": "the same without refinement",
    "crossview_angle_deg": "the same views: mean angle between the 21 body-frame joint rotations, with refinement",
    "crossview_angle_deg_unrefined": "the same without refinement",
    "crossview_size_spread": "the same views: (largest - smallest) / mean of the body's summed limb and trunk "
                             "segment lengths, with refinement",
    "crossview_size_spread_unrefined": "the same without refinement",
    "real_pa_mpjpe_mm_vs_triangulation": "the same views: PA-MPJPE of the body's 16 limb landmarks (shoulders to "
                                         "feet) against the four views' MediaPipe 2D keypoints triangulated with "
                                         "the trial's calibration, mean over views, with refinement",
    "real_pa_mpjpe_mm_vs_triangulation_unrefined": "the same without refinement",
    "real_pa_mpjpe_mm_mediapipe_world_vs_triangulation": "the same for MediaPipe's own world landmarks (for scale)",
    "crossview_limb_pa_mpjpe_mm": "the same views: pairwise PA-MPJPE of the 16 limb landmarks, frames matched by "
                                  "the calibrated lags, with refinement (mean of 6 pairs)",
    "crossview_limb_pa_mpjpe_mm_mediapipe_world": "the same for MediaPipe's own world landmarks: how far a "
                                                  "production monocular 3D estimate disagrees with itself here",
    "reproj_err_bbox_frac_before": "Demo_SinglePerson 4 views: mean 2D error of confident landmarks / bbox height, "
                                   "before refinement",
    "reproj_err_bbox_frac_after": "the same after refinement",
    "ort_vs_eager_b1": "decoding-step throughput, ONNX Runtime / PyTorch eager (no_grad), batch 1: median ratio "
                       "of 9 interleaved rounds of 20 calls each, same process",
    "ort_vs_eager_b8": "the same, batch 8",
    "ort_vs_eager_b32": "the same, batch 32",
    "refine_ms_per_frame": "refinement wall time per frame, one 300-frame track, default steps",
    "body_path_fps": "body stage (tokens via ONNX Runtime, refinement, joints, GLB + NPZ mesh files) frames/s on "
                     "a 10 s clip (Demo_SinglePerson cam01 at 30 fps played forwards and backwards, 1080x1920)",
    "body_vs_keypoints_time": "body stage time / keypoint stage time on that clip, same run (target <= 0.5)",
    "body_vs_keypoints_time_no_mesh_files": "the same without writing the mesh files",
}


def synthetic(stage, layer) -> dict[str, float]:
    data = generate(layer, 24, 30, seed=HELD_OUT_SEED, num_shape=layer.config.num_shape, fps=SYNTH_FPS)
    gt = data.joints[:, list(BODY_METRIC_JOINTS)]
    before, after = [], []
    for s in range(24):
        idx = (data.sequence == s).nonzero().squeeze(1)
        kp = data.keypoints[idx]
        init = predict_bodies(stage.step_fn, stage.decoder_fn, kp, stage.iterations)  # every frame: no refinement
        keyframes = predict_track(stage.step_fn, stage.decoder_fn, kp, stage.iterations,
                                  stride=stage.decode_stride(SYNTH_FPS))  # what the worker refines from
        intr = box_intrinsics(FOCAL_PX, torch.zeros(2), data.box_center[idx], data.box_half[idx])
        res = refine_track(layer, stage.tokenizer.decoder, stage.tokenizer.codebook.detach(), keyframes, kp,
                           data.world[idx], stage.refine_config, intrinsics=intr)
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
    reference = triangulate_views(views, demo_calibration(VAR / "cache" / "pose2sim"), LAGS_30FPS)
    mp = {}
    for cam, t in views.items():  # MediaPipe's own world landmarks against the same reference, for scale
        lag = LAGS_30FPS.get(cam, 0)
        world = {f.index - lag: f.people[0][1].world for f in t.frames if f.people}
        frames = [f for f in reference if f in world and not np.isnan(reference[f][list(LIMB_LANDMARKS)]).any()]
        sel = list(LIMB_LANDMARKS)
        mp[cam] = float(pa_mpjpe_mm(torch.from_numpy(np.stack([world[f] for f in frames])[:, sel]).float(),
                                    torch.from_numpy(np.stack([reference[f] for f in frames])[:, sel]).float()).mean())
    out["real_pa_mpjpe_mm_mediapipe_world_vs_triangulation"] = round(float(np.mean(list(mp.values()))), 1)
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
        # "before": every frame decoded, nothing refined (the unrefined pass); "after": the worker's way
        frac = np.concatenate([t.reproj_after_px / np.maximum(t.bbox_height_px, 1) for t in tracks.values()])
        out["reproj_err_bbox_frac_after" if n else "reproj_err_bbox_frac_before"] = round(float(frac.mean()), 4)
        sizes = {cam: float(_segment_sum(stage.layer, t)) for cam, t in tracks.items()}
        out[f"crossview_size_spread{label}"] = round((max(sizes.values()) - min(sizes.values()))
                                                     / float(np.mean(list(sizes.values()))), 3)
        print(f"body size (summed limb and trunk segments, m) per view{label}: "
              f"{ {cam[-2:]: round(v, 2) for cam, v in sizes.items()} }")
        acc = vs_triangulation(views, tracks, stage.layer, reference)
        out[f"real_pa_mpjpe_mm_vs_triangulation{label}"] = round(float(np.mean(list(acc.values()))), 1)
        print(f"PA-MPJPE against the triangulation per view{label}: { {c[-2:]: round(v) for c, v in acc.items()} }")
        if n:
            out["crossview_limb_pa_mpjpe_mm"] = round(_crossview_landmarks(
                {cam: _body_landmarks(stage.layer, tb) for cam, tb in tracks.items()}), 1)
    world = {cam: {f.index: f.people[0][1].world for f in t.frames if f.people} for cam, t in views.items()}
    out["crossview_limb_pa_mpjpe_mm_mediapipe_world"] = round(_crossview_landmarks(world), 1)
    return out


def _body_landmarks(layer, tb) -> dict[int, np.ndarray]:
    """{frame index: (L, 3) landmarks} of a track's bodies (model frame, root at the origin)."""
    T = len(tb.frame_index)
    with torch.no_grad():
        _, lm = layer.skeleton(torch.from_numpy(tb.rotations), torch.from_numpy(tb.shape)[None].expand(T, -1),
                               torch.zeros(T, 3))
    return {int(f): lm[k].numpy() for k, f in enumerate(tb.frame_index)}


def _crossview_landmarks(per_view: dict[str, dict[int, np.ndarray]]) -> float:
    """Mean pairwise PA-MPJPE (mm) of the limb landmarks between views, frames matched by the trial's
    calibrated lags: the same comparison for our bodies and for MediaPipe's world landmarks."""
    sel, errs = list(LIMB_LANDMARKS), []
    for a, b in itertools.combinations(sorted(per_view), 2):
        shift = LAGS_30FPS.get(b, 0) - LAGS_30FPS.get(a, 0)
        frames = [f for f in per_view[a] if f + shift in per_view[b]]
        A = torch.from_numpy(np.stack([per_view[a][f][sel] for f in frames])).float()
        B = torch.from_numpy(np.stack([per_view[b][f + shift][sel] for f in frames])).float()
        errs.append(float(pa_mpjpe_mm(A, B).mean()))
    return float(np.mean(errs))


# -- a real 3D reference: Demo_SinglePerson's four calibrated views, triangulated ---------------------

LIMB_LANDMARKS = (11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32)  # shoulders .. feet


def _observations(track, lag: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{cam01 frame index: (landmarks_2d (L, 2), visibility (L,))} of a view's first person."""
    return {f.index - lag: (f.people[0][1].landmarks_2d, f.people[0][1].visibility) for f in track.frames if f.people}


def triangulate_views(views: dict, projections: dict[str, np.ndarray], lags: dict[str, int],
                      min_confidence: float = 0.5, max_residual_px: float = 40.0) -> dict[int, np.ndarray]:
    """{frame: (L, 3) world landmarks} from every view's 2D keypoints (frames all views share).

    Per landmark: confidence-weighted DLT over the views that see it (confidence >= min_confidence),
    then, while more than two views remain, the view with the largest reprojection residual is dropped
    if that residual exceeds max_residual_px (MediaPipe sometimes places a far-side limb wrongly in
    one view). Landmarks seen by fewer than two views are NaN."""
    obs = {cam: _observations(t, lags.get(cam, 0)) for cam, t in views.items()}
    frames = sorted(set.intersection(*(set(o) for o in obs.values())))
    out = {}
    for f in frames:
        points = np.full((33, 3), np.nan)
        for j in range(33):
            cams = [c for c in obs if obs[c][f][1][j] >= min_confidence]
            while len(cams) >= 2:
                rows = []
                for c in cams:
                    (xy, vis), P = obs[c][f], projections[c]
                    rows += [vis[j] * (xy[j, 0] * P[2] - P[0]), vis[j] * (xy[j, 1] * P[2] - P[1])]
                X = np.linalg.svd(np.asarray(rows))[2][-1]
                X = X[:3] / X[3]
                res = []
                for c in cams:
                    h = projections[c] @ np.append(X, 1.0)
                    res.append(np.linalg.norm(h[:2] / h[2] - obs[c][f][0][j]))
                worst = int(np.argmax(res))
                if len(cams) > 2 and res[worst] > max_residual_px:
                    cams.pop(worst)
                    continue
                points[j] = X
                break
        out[f] = points
    return out


def vs_triangulation(views: dict, tracks: dict, layer, reference: dict[int, np.ndarray]) -> dict[str, float]:
    """Per view: PA-MPJPE (mm) of the body's limb landmarks against the triangulated ones."""
    out = {}
    for cam, tb in tracks.items():
        lag, sel = LAGS_30FPS.get(cam, 0), list(LIMB_LANDMARKS)
        body = _body_landmarks(layer, tb)
        frames = [f for f in reference if f + lag in body and not np.isnan(reference[f][sel]).any()]
        lm = torch.from_numpy(np.stack([body[f + lag][sel] for f in frames])).float()
        ref = torch.from_numpy(np.stack([reference[f][sel] for f in frames])).float()
        out[cam] = float(pa_mpjpe_mm(lm, ref).mean())
    return out


def _segment_sum(layer, tb) -> Tensor:
    """Summed lengths of the refinement's limb and trunk segments (metres) of a track's body, rest pose."""
    eye = torch.eye(3).expand(1, layer.config.num_joints, 3, 3)
    with torch.no_grad():
        _, lm = layer.skeleton(eye, torch.from_numpy(tb.shape)[None], torch.zeros(1, 3))
    return bone_lengths(lm[0]).sum()


def _interleaved_ratio(fast, slow, calls: int = 20, rounds: int = 9) -> tuple[float, float, float]:
    """Throughput of `fast` over `slow`: blocks of `calls` calls of each, alternating, `rounds` times;
    the median of the per-round ratios, so a burst of load from other tenants of this shared
    machine lands in one round, not on one side of the comparison. Returns (ratio, calls/s of
    fast, calls/s of slow), the rates being medians too."""
    fast(), slow()
    ratios, rate_f, rate_s = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            slow()
        t_slow = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(calls):
            fast()
        t_fast = time.perf_counter() - t0
        ratios.append(t_slow / t_fast)
        rate_f.append(calls / t_fast)
        rate_s.append(calls / t_slow)
    return float(np.median(ratios)), float(np.median(rate_f)), float(np.median(rate_s))


def speed(stage, layer, clips: dict[str, Path], model_dir: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    _, model, _ = load_trained(REPO / "models" / "weights" / "default")
    eager = TorchStepFn(model)
    cfg = model.cfg
    for b in (1, 8, 32):
        ids = torch.randint(0, cfg.codebook_size + 1, (b, cfg.num_tokens))
        kp = torch.rand(b, 33, 3)
        ratio, o, e = _interleaved_ratio(lambda: stage.step_fn(ids, kp, None), lambda: eager(ids, kp, None))  # noqa: B023
        out[f"ort_vs_eager_b{b}"] = round(ratio, 2)
        print(f"decode step batch {b}: eager {e * b:.0f}/s, ORT {o * b:.0f}/s (medians of 9 interleaved rounds)")
    data = generate(layer, 1, 300, seed=HELD_OUT_SEED + 1, num_shape=layer.config.num_shape)
    init = predict_bodies(stage.step_fn, stage.decoder_fn, data.keypoints, stage.iterations)
    args = (layer, stage.tokenizer.decoder, stage.tokenizer.codebook.detach(), init, data.keypoints, data.world)
    intr = box_intrinsics(FOCAL_PX, torch.zeros(2), data.box_center, data.box_half)
    refine_track(*args, RefineConfig(steps=2), intrinsics=intr)  # warm up
    t0 = time.perf_counter()
    refine_track(*args, stage.refine_config, intrinsics=intr)
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
    from bench.run import merge_results
    from kinemesh.models.assets.pose2sim_clips import ensure_demo_clips

    merge_results(body_figures(VAR / "models", ensure_demo_clips(VAR / "cache" / "pose2sim")), "bench-body", "bench_body.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
