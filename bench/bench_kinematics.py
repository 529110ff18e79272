"""Kinematics accuracy and speed (issue 4): `make bench-kinematics` or as part of `make bench`.

NeurIK is judged against OpenSim IK (its teacher, the reference) on the same virtual markers:
  synthetic  held-out sequences from `neurik_data.generate` with a seed training never used: random
             body shapes doing the body model's motions, their virtual markers (what the worker feeds
             NeurIK), labelled by OpenSim IK on the subject's scaled model;
  real       Pose2Sim Demo_SinglePerson's four views, each through keypoints -> body on its own; every
             track's virtual markers go through OpenSim IK and NeurIK on the same scaled model.
RMSE per coordinate in degrees over the coordinates NeurIK estimates: its 25 joint coordinates and the
pelvis's tilt, list and rotation (the fixed toes, neck and wrists and the translations are left out).
Speed: NeurIK (pelvis fit, features, the bundle's ONNX graph through the worker's ONNX Runtime backend,
every window of a track in one call) against OpenSim's InverseKinematicsTool on the same frames, one run.
Cross-view: the views' disagreement on the lower-limb sagittal angles, frames matched by the trial's
calibrated lags, for both methods.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kinemesh.models.assets.pose2sim_clips import SINGLE_PERSON_LAGS_60FPS  # noqa: E402
from kinemesh.models.biomech.neurik import UNOBSERVED, angle_rmse_deg  # noqa: E402
from kinemesh.models.biomech.neurik_data import MAX_SPEED_DEG_S, generate, ik_flips  # noqa: E402
from kinemesh.models.biomech.opensim_model import OsimModel  # noqa: E402
from kinemesh.services.common.media import MediaLimits  # noqa: E402
from kinemesh.services.worker.stages.kinematics import SAGITTAL, KinematicsStage  # noqa: E402

VAR = REPO / "var"
NO_LIMITS = MediaLimits(max_duration_s=1e9, max_pixels=1 << 40, max_side=1 << 20)
LAGS_30FPS = {cam: lag // 2 for cam, lag in SINGLE_PERSON_LAGS_60FPS.items()}
HELD_OUT_SEED = 2024  # NeurIK's training used data seeds 0 (train) and 1000 (validation)
VIEWS = ("single_cam01", "single_cam02", "single_cam03", "single_cam04")
LOWER_LIMB = ("hip_flexion", "hip_adduction", "hip_rotation", "knee_angle", "ankle_angle", "subtalar_angle")

DESCRIPTIONS = {
    "neurik_rmse_deg_mean_synth": "NeurIK vs OpenSim IK, held-out synthetic set (6 new body shapes x 4 motions x "
                                  "96 frames, seed 2024, the body model's virtual markers), RMSE in degrees, mean "
                                  "over its 25 joint coordinates and the pelvis's 3 angles (target <= 2)",
    "neurik_rmse_deg_mean_real": "the same on Demo_SinglePerson's 4 views (keypoints -> body -> virtual markers, "
                                 "each view alone), both methods on the same markers and scaled model (target <= 2)",
    "neurik_rmse_deg_max_lower_limb": "the largest RMSE of any hip, knee, ankle or subtalar coordinate over both "
                                      "sets (target <= 4)",
    "neurik_rmse_deg_mean_real_no_arms": "the same without the 10 arm coordinates (pelvis, hips, knees, ankles, "
                                         "subtalar, lumbar: 18 coordinates)",
    "neurik_rmse_deg_mean_real_no_ik_flips": "the real mean over the frames where OpenSim IK moves no angle faster "
                                             "than 900 deg/s (next to such a jump its arm angles flip: no function "
                                             "of the markers to match)",
    "neurik_speedup_vs_opensim": "frames/s of NeurIK (pelvis fit + ONNX Runtime graph, every window of a track in "
                                 "one call) over OpenSim's InverseKinematicsTool on the same frames (the 4 views' "
                                 "tracks), same run (target >= 100)",
    "neurik_fps": "NeurIK frames/s in that comparison (median of 7 repeats per track)",
    "opensim_ik_fps": "OpenSim IK frames/s in that comparison",
    "crossview_joint_angle_deg": "Demo_SinglePerson, 4 views each processed alone, kinematics stage as the worker "
                                 "runs it (NeurIK, 6 Hz low-pass): mean absolute disagreement between views of hip, "
                                 "knee and ankle flexion, frames matched by the calibrated lags (6 pairs x 6 angles)",
    **{f"crossview_joint_angle_deg_{c}": f"the same for {c} alone" for c in SAGITTAL},
    "crossview_joint_angle_deg_opensim": "the same with OpenSim IK instead of NeurIK",
    "kinematics_ms_per_frame": "kinematics stage time per person-frame on those views with NeurIK (markers, "
                               "scaling, NeurIK, marker error, files)",
    "kinematics_ms_per_frame_opensim": "the same with OpenSim IK",
}


def compared(stage: KinematicsStage) -> list[int]:
    """Indices of the coordinates NeurIK is judged on: every angle but the fixed ones."""
    m = stage.model
    return [i for i, (n, r) in enumerate(zip(m.coordinate_names, m.rotational, strict=True)) if r and n not in UNOBSERVED]


def synthetic(stage: KinematicsStage) -> np.ndarray:
    """Per-coordinate RMSE (C,) of NeurIK against OpenSim IK on the held-out synthetic set."""
    idx = compared(stage)
    with tempfile.TemporaryDirectory(prefix="kinemesh-bench-neurik-") as tmp:
        data = generate(stage.model, stage.layer, stage.markers, subjects=6, sequences_per_subject=4, frames=96,
                        seed=HELD_OUT_SEED, occlusion=0.0, work_dir=tmp)
        subjects = {s: OsimModel(Path(tmp) / f"subject{s}.osim") for s in set(data.subject.tolist())}
        pred, truth = [], []
        for p, kind in enumerate(data.kind):
            if kind == "body":  # the runtime input; its labels are OpenSim IK on these very markers
                pred.append(stage.solve_neurik(subjects[int(data.subject[p])], data.markers[p])[:, idx])
                truth.append(data.coordinates[p][:, idx])
    return angle_rmse_deg(np.stack(pred), np.stack(truth), wrap=True)


def real_views(clips: dict[str, Path], model_dir: Path):
    """{view: BodyResult} for the four Demo_SinglePerson views, and the body stage."""
    from kinemesh.services.worker.stages.base import NullContext
    from kinemesh.services.worker.stages.body import BodyStage
    from kinemesh.services.worker.stages.decode import DecodeStage
    from kinemesh.services.worker.stages.keypoints import KeypointStage

    body = BodyStage(model_dir / "bundle" / "default")
    out = {}
    with KeypointStage(model_dir, max_people=1) as kps:
        for cam in VIEWS:
            tracks = kps.run(DecodeStage().open(clips[cam], 30.0, limits=NO_LIMITS), NullContext())
            out[cam] = body.run(tracks, NullContext(), meshes=False)
    return out, body


def flip_frames(values: np.ndarray, stage: KinematicsStage, fps: float) -> np.ndarray:
    """(T,) bool: frames next to an OpenSim IK flip (`ik_flips`)."""
    step = ik_flips(values, stage.model, fps)
    out = np.zeros(len(values), bool)
    out[1:] |= step
    out[:-1] |= step
    return out


def neurik_vs_opensim(stage: KinematicsStage, bodies: dict) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per-coordinate RMSE (C,) of NeurIK against OpenSim IK on every track of the real views, the
    same over the frames where OpenSim IK did not flip, and the frames per second of each."""
    idx = compared(stage)
    diffs, flips, frames, t_ik, t_nk = [], [], 0, 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="kinemesh-bench-ik-") as tmp:
        for cam, res in bodies.items():
            for tb in res.tracks:
                names, markers, scaled = stage.subject(tb, Path(tmp) / cam)
                t0 = time.perf_counter()
                ik = scaled.model.inverse_kinematics(markers, names, 30.0)
                t_ik += time.perf_counter() - t0
                runs = []
                for _ in range(7):
                    t0 = time.perf_counter()
                    nk = stage.solve_neurik(scaled.model, markers)
                    runs.append(time.perf_counter() - t0)
                t_nk += float(np.median(runs))
                frames += len(markers)
                diffs.append((nk[:, idx], ik.values[:, idx]))
                flips.append(flip_frames(ik.values, stage, 30.0))
    pred = np.concatenate([d[0] for d in diffs])
    truth = np.concatenate([d[1] for d in diffs])
    steady = ~np.concatenate(flips)
    print(f"  OpenSim IK flips (an angle jumps > {MAX_SPEED_DEG_S:g} deg/s) next to {1 - steady.mean():.0%} of the "
          "real frames")
    return (angle_rmse_deg(pred, truth, wrap=True), angle_rmse_deg(pred[steady], truth[steady], wrap=True),
            frames / t_nk, frames / t_ik)


def crossview(stage: KinematicsStage, bodies: dict, ik: str) -> tuple[dict[str, float], float]:
    """The kinematics stage (`ik`) on each view: the views' mean disagreement per sagittal angle, and
    the stage's milliseconds per person-frame."""
    from kinemesh.services.worker.stages.base import NullContext

    angles, frames, seconds = {}, 0, 0.0
    for cam, body in bodies.items():
        t0 = time.perf_counter()
        res = stage.run(body, 30.0, NullContext(), ik=ik)
        seconds += time.perf_counter() - t0
        frames += sum(len(t.frame_index) for t in res.tracks)
        track = max(res.tracks, key=lambda t: len(t.frame_index))
        deg = np.degrees(track.values[:, [res.coordinate_names.index(c) for c in SAGITTAL]])
        lag = LAGS_30FPS.get(cam, 0)
        angles[cam] = {int(f) - lag: deg[k] for k, f in enumerate(track.frame_index)}
    diffs = []  # (pairs, 6) mean absolute difference per coordinate
    for a, b in itertools.combinations(sorted(angles), 2):
        common = sorted(set(angles[a]) & set(angles[b]))
        diffs.append(np.mean([np.abs(angles[a][f] - angles[b][f]) for f in common], 0))
    per = np.mean(diffs, 0)
    return {c: float(v) for c, v in zip(SAGITTAL, per, strict=True)}, 1000 * seconds / max(frames, 1)


def kinematics_figures(model_dir: Path, clips: dict[str, Path]) -> dict[str, float]:
    print("kinematics: the four views through keypoints and body ...", flush=True)
    bodies, body = real_views(clips, model_dir)
    stage = KinematicsStage(model_dir, body.layer, body.bundle, body.backend)
    names = [stage.model.coordinate_names[i] for i in compared(stage)]
    print("kinematics: NeurIK vs OpenSim IK, held-out synthetic set ...", flush=True)
    synth = synthetic(stage)
    print("kinematics: NeurIK vs OpenSim IK, real views ...", flush=True)
    real, steady, nk_fps, ik_fps = neurik_vs_opensim(stage, bodies)
    legs = [i for i, n in enumerate(names) if not n.startswith(("arm_", "elbow_", "pro_sup"))]
    out: dict[str, float] = {
        "neurik_rmse_deg_mean_synth": round(float(synth.mean()), 2),
        "neurik_rmse_deg_mean_real": round(float(real.mean()), 2),
        "neurik_rmse_deg_max_lower_limb": round(float(max(
            v for n, a, b in zip(names, synth, real, strict=True) if n.removesuffix("_r").removesuffix("_l")
            in LOWER_LIMB for v in (a, b))), 2),
        "neurik_rmse_deg_mean_real_no_arms": round(float(real[legs].mean()), 2),
        "neurik_rmse_deg_mean_real_no_ik_flips": round(float(steady.mean()), 2),
        "neurik_speedup_vs_opensim": round(nk_fps / ik_fps, 1),
        "neurik_fps": round(nk_fps, 1), "opensim_ik_fps": round(ik_fps, 1),
    }
    for n, a, b, c in zip(names, synth, real, steady, strict=True):
        print(f"  {n:22s} synth {a:5.2f}  real {b:5.2f}  real without IK flips {c:5.2f}")
    per_coordinate = {n: {"synth": round(float(a), 2), "real": round(float(b), 2), "real_no_ik_flips": round(float(c), 2)}
                      for n, a, b, c in zip(names, synth, real, steady, strict=True)}
    print("kinematics: cross-view disagreement ...", flush=True)
    for ik, suffix in (("neurik", ""), ("opensim", "_opensim")):
        per, ms = crossview(stage, bodies, ik)
        out[f"crossview_joint_angle_deg{suffix}"] = round(float(np.mean(list(per.values()))), 1)
        out[f"kinematics_ms_per_frame{suffix}"] = round(ms, 2)
        if ik == "neurik":
            out.update({f"crossview_joint_angle_deg_{c}": round(v, 1) for c, v in per.items()})
    (REPO / "bench" / "neurik_rmse_per_coordinate.json").write_text(json.dumps(per_coordinate, indent=2) + "\n")
    return out


def main() -> int:
    from bench.run import merge_results
    from kinemesh.models.assets.pose2sim_clips import ensure_demo_clips

    merge_results(kinematics_figures(VAR / "models", ensure_demo_clips(VAR / "cache" / "pose2sim")), "bench-kinematics", "bench_kinematics.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
