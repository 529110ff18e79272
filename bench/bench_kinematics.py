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
Each figure is given for the network alone (the `neurik_*` keys, as the issue defines them) and for
what the worker serves by default, the network followed by the least-squares marker fit
(`neurik_fit_*`, FIT_ITERATIONS steps; the real set also with other step counts). Diagnostics of
what is left: OpenSim IK run backwards in time against itself, the fit from OpenSim IK's own
answers, the fit run frame by frame as IK tracks, and NeurIK + fit on each of Demo_MultiPerson's
four views (never used to choose anything).
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
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kinemesh.models.assets.pose2sim_clips import SINGLE_PERSON_LAGS_60FPS  # noqa: E402
from kinemesh.models.biomech.neurik import UNOBSERVED, angle_rmse_deg  # noqa: E402
from kinemesh.models.biomech.neurik_data import MAX_SPEED_DEG_S, generate, ik_flips  # noqa: E402
from kinemesh.models.biomech.opensim_model import OsimModel  # noqa: E402
from kinemesh.models.biomech.osim_torch import TorchKinematics, fit_markers, ik_bounds  # noqa: E402
from kinemesh.services.common.media import MediaLimits  # noqa: E402
from kinemesh.services.worker.stages.kinematics import FIT_ITERATIONS, SAGITTAL, KinematicsStage  # noqa: E402

VAR = REPO / "var"
NO_LIMITS = MediaLimits(max_duration_s=1e9, max_pixels=1 << 40, max_side=1 << 20)
LAGS_30FPS = {cam: lag // 2 for cam, lag in SINGLE_PERSON_LAGS_60FPS.items()}
HELD_OUT_SEED = 2024  # NeurIK's training used data seeds 0 (train) and 1000 (validation)
VIEWS = ("single_cam01", "single_cam02", "single_cam03", "single_cam04")
OTHER_VIEWS = ("multi_cam01", "multi_cam02", "multi_cam03", "multi_cam04")  # Demo_MultiPerson, one person each
FIT_SWEEP = (3, 5, FIT_ITERATIONS, 20)  # marker-fit steps tried on the real set
LONG_TRACK = 900  # frames of the long-track speed figure
ARM_SEGMENTS = ("humerus_r", "ulna_r", "radius_r", "humerus_l", "ulna_l", "radius_l")  # judged by orientation
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
    "neurik_fit_rmse_deg_mean_synth": f"NeurIK then {FIT_ITERATIONS} steps of the marker fit (the worker's default "
                                      "ik=neurik) vs OpenSim IK, held-out synthetic set, mean RMSE in degrees",
    "neurik_fit_rmse_deg_mean_real": "the same on the real views",
    "neurik_fit_rmse_deg_max_lower_limb": "the largest lower-limb RMSE of NeurIK + fit over both sets",
    "neurik_fit_rmse_deg_mean_real_no_arms": "NeurIK + fit on the real views without the 10 arm coordinates",
    **{f"neurik_fit{n}_rmse_deg_mean_real": f"NeurIK then {n} marker-fit steps vs OpenSim IK, real views"
       for n in FIT_SWEEP if n != FIT_ITERATIONS},
    "neurik_fit_marker_rms_vs_opensim": "NeurIK + fit's RMS marker error over OpenSim IK's on the real frames "
                                        "(both minimise it; below 1: the fit explains the markers better)",
    "neurik_fit_sequential_rmse_deg_mean_real": "diagnostic: the marker fit run as OpenSim IK tracks (frame 0 as "
                                                "served, then each frame alone from the previous frame's answer) vs "
                                                "OpenSim IK, real views",
    "opensim_ik_backwards_rmse_deg_mean_real": "diagnostic: OpenSim IK on the same markers run backwards in time "
                                               "vs forwards (the reference against itself: its answer depends on the "
                                               "frame it starts from), real views",
    "opensim_ik_backwards_rmse_deg_mean_real_no_arms": "the same without the 10 arm coordinates",
    "neurik_fit_arm_segment_deg_real": "diagnostic: the arms judged by segment orientation instead of Euler angles: "
                                       "the rotation between NeurIK + fit's and OpenSim IK's orientation of each "
                                       "humerus, ulna and radius relative to its parent body, RMS over the real "
                                       "frames in degrees, mean of the 6 segments",
    "opensim_ik_backwards_arm_segment_deg_real": "the same for OpenSim IK run backwards in time",
    "neurik_fit_from_ik_rmse_deg_mean_real": "diagnostic: the marker fit started from OpenSim IK's own answers vs "
                                             "those answers, real views (how far IK stops from the minimum)",
    **{f"neurik_fit_rmse_deg_mean_{cam}": f"NeurIK + fit vs OpenSim IK on Demo_MultiPerson's {cam[-5:]} alone "
       "(one person; not used for any choice)" for cam in OTHER_VIEWS},
    "neurik_fit_fps": "NeurIK + fit frames/s on the real tracks (median of 7 repeats per track)",
    "neurik_fit_speedup_vs_opensim": "NeurIK + fit frames/s over OpenSim IK's on the real tracks (short "
                                     "tracks: per-track fixed costs weigh), same run",
    "neurik_fit_fps_long_track": "NeurIK + fit frames/s on one 900-frame track (a real view's markers played "
                                 "forwards and backwards; median of 3)",
    "opensim_ik_fps_long_track": "OpenSim IK frames/s on that track",
    "neurik_fit_speedup_vs_opensim_long_track": "the ratio of the two, same run",
    "opensim_ik_fps": "OpenSim IK frames/s in that comparison",
    "crossview_joint_angle_deg": "Demo_SinglePerson, 4 views each processed alone, kinematics stage as the worker "
                                 "runs it (NeurIK + marker fit, 6 Hz low-pass): mean absolute disagreement between views of hip, "
                                 "knee and ankle flexion, frames matched by the calibrated lags (6 pairs x 6 angles)",
    **{f"crossview_joint_angle_deg_{c}": f"the same for {c} alone" for c in SAGITTAL},
    "crossview_joint_angle_deg_opensim": "the same with OpenSim IK instead of NeurIK",
    "kinematics_ms_per_frame": "kinematics stage time per person-frame on those views with NeurIK (markers, "
                               "scaling, NeurIK + marker fit, files)",
    "kinematics_ms_per_frame_opensim": "the same with OpenSim IK",
}


def compared(stage: KinematicsStage) -> list[int]:
    """Indices of the coordinates NeurIK is judged on: every angle but the fixed ones."""
    m = stage.model
    return [i for i, (n, r) in enumerate(zip(m.coordinate_names, m.rotational, strict=True)) if r and n not in UNOBSERVED]


def synthetic(stage: KinematicsStage) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate RMSE (C,) of NeurIK, and of NeurIK + fit, against OpenSim IK on the held-out
    synthetic set."""
    idx = compared(stage)
    with tempfile.TemporaryDirectory(prefix="kinemesh-bench-neurik-") as tmp:
        data = generate(stage.model, stage.layer, stage.markers, subjects=6, sequences_per_subject=4, frames=96,
                        seed=HELD_OUT_SEED, occlusion=0.0, work_dir=tmp)
        subjects = {s: OsimModel(Path(tmp) / f"subject{s}.osim") for s in set(data.subject.tolist())}
        pred, fitted, truth = [], [], []
        for p, kind in enumerate(data.kind):
            if kind == "body":  # the runtime input; its labels are OpenSim IK on these very markers
                subject, markers = subjects[int(data.subject[p])], data.markers[p]
                net = stage.solve_neurik(subject, markers)
                pred.append(net[:, idx])
                fitted.append(stage.fit(subject, markers, net, FIT_ITERATIONS)[0][:, idx])
                truth.append(data.coordinates[p][:, idx])
    truth_ = np.stack(truth)
    return angle_rmse_deg(np.stack(pred), truth_, wrap=True), angle_rmse_deg(np.stack(fitted), truth_, wrap=True)


def real_views(clips: dict[str, Path], model_dir: Path, views: tuple[str, ...] = VIEWS + OTHER_VIEWS):
    """{view: BodyResult} for `views` (default: Demo_SinglePerson's and Demo_MultiPerson's four), and
    the body stage."""
    from kinemesh.services.worker.stages.base import NullContext
    from kinemesh.services.worker.stages.body import BodyStage
    from kinemesh.services.worker.stages.decode import DecodeStage
    from kinemesh.services.worker.stages.keypoints import KeypointStage

    body = BodyStage(model_dir / "bundle" / "default")
    out = {}
    with KeypointStage(model_dir, max_people=1) as kps:
        for cam in views:
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


def _median_time(fn, *args, repeats: int = 7) -> float:
    """Median seconds of `fn(*args)` over `repeats` calls."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        runs.append(time.perf_counter() - t0)
    return float(np.median(runs))


def _served(stage: KinematicsStage, subject: OsimModel, markers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What `ik=neurik` computes: the network, then the stage's marker fit."""
    return stage.fit(subject, markers, stage.solve_neurik(subject, markers))


def neurik_vs_opensim(stage: KinematicsStage, bodies: dict) -> dict:
    """On every track of the real views, against OpenSim IK: per-coordinate RMSE (C,) of NeurIK
    ("network"), of NeurIK + fit ("fit", and "fit<n>" for each step count in FIT_SWEEP), the network's
    over the frames where OpenSim IK did not flip ("steady"); frames per second of IK, the network and
    network + fit ("fps_ik", "fps_network", "fps_fit"); the fit's marker RMS over IK's ("rms_ratio")."""
    idx = compared(stage)
    steps = sorted({0, *FIT_SWEEP})
    pred: dict[int, list] = {n: [] for n in steps}
    truth, flips, rms_fit, rms_ik, sequential, from_ik, backwards = [], [], [], [], [], [], []
    segments: dict[str, list] = {"fit": [], "backwards": []}
    frames, t_ik, t_nk, t_fit = 0, 0.0, 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="kinemesh-bench-ik-") as tmp:
        for cam, res in bodies.items():
            for tb in res.tracks:
                names, markers, scaled = stage.subject(tb, Path(tmp) / cam)
                t0 = time.perf_counter()
                ik = scaled.model.inverse_kinematics(markers, names, 30.0)
                t_ik += time.perf_counter() - t0
                t_nk += _median_time(stage.solve_neurik, scaled.model, markers)
                t_fit += _median_time(_served, stage, scaled.model, markers)
                frames += len(markers)
                net = stage.solve_neurik(scaled.model, markers)
                for n in steps:
                    values, rms = stage.fit(scaled.model, markers, net, n)
                    pred[n].append(values[:, idx])
                    if n == FIT_ITERATIONS:
                        rms_fit.append(rms)
                        sequential.append(fit_frame_by_frame(stage, scaled.model, markers, values[0])[:, idx])
                        segments["fit"].append(segment_angles(stage, scaled.model, values, ik.values))
                from_ik.append(stage.fit(scaled.model, markers, ik.values)[0][:, idx])
                back = scaled.model.inverse_kinematics(markers[::-1].copy(), names, 30.0).values[::-1].copy()
                backwards.append(back[:, idx])
                segments["backwards"].append(segment_angles(stage, scaled.model, back, ik.values))
                truth.append(ik.values[:, idx])
                rms_ik.append(ik.marker_rms_m)
                flips.append(flip_frames(ik.values, stage, 30.0))
    want = np.concatenate(truth)
    steady = ~np.concatenate(flips)
    print(f"  OpenSim IK flips (an angle jumps > {MAX_SPEED_DEG_S:g} deg/s) next to {1 - steady.mean():.0%} of the "
          "real frames")
    rmse = {n: angle_rmse_deg(np.concatenate(pred[n]), want, wrap=True) for n in steps}
    out = {"network": rmse[0], "fit": rmse[FIT_ITERATIONS],
           "steady": angle_rmse_deg(np.concatenate(pred[0])[steady], want[steady], wrap=True),
           "fps_ik": frames / t_ik, "fps_network": frames / t_nk, "fps_fit": frames / t_fit,
           "rms_ratio": float(np.sqrt(np.mean(np.concatenate(rms_fit) ** 2) / np.mean(np.concatenate(rms_ik) ** 2)))}
    out.update({f"fit{n}": rmse[n] for n in FIT_SWEEP if n != FIT_ITERATIONS})
    out["fit_sequential"] = angle_rmse_deg(np.concatenate(sequential), want, wrap=True)
    out["fit_from_ik"] = angle_rmse_deg(np.concatenate(from_ik), want, wrap=True)
    out["ik_backwards"] = angle_rmse_deg(np.concatenate(backwards), want, wrap=True)
    for k, v in segments.items():  # RMS over the frames, per segment
        out[f"segments_{k}"] = np.sqrt(np.mean(np.concatenate(v) ** 2, 0))
    return out


def fit_frame_by_frame(stage: KinematicsStage, subject: OsimModel, markers: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The marker fit as OpenSim IK tracks: frame 0 is `first` (C,), then each frame alone from the
    previous frame's answer, FIT_ITERATIONS steps each: coordinates (T, C)."""
    fk = TorchKinematics(subject, stage.marker_names)
    lower, upper, free = ik_bounds(subject)
    out = [np.asarray(first, dtype=np.float64)]
    for t in range(1, len(markers)):
        out.append(fit_markers(fk, markers[t:t + 1], out[-1][None], lower, upper, free, FIT_ITERATIONS)[0][0])
    return np.stack(out)


def segment_angles(stage: KinematicsStage, subject: OsimModel, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T, len(ARM_SEGMENTS)) degrees: the rotation between each arm segment's orientation relative to
    its parent body under coordinates `a` and under `b` (T, C): the same for equivalent Euler angles."""
    fk = TorchKinematics(subject, stage.marker_names)
    parents = {fk.bodies[j.child]: j.parent for j in fk.joints if j.parent >= 0}  # the arms hang off the torso
    out = []
    for q in (a, b):
        r, _ = fk.body_transforms(torch.as_tensor(q, dtype=torch.float64))
        out.append(torch.stack([r[:, parents[s]].transpose(1, 2) @ r[:, fk.bodies.index(s)] for s in ARM_SEGMENTS], 1))
    rel = out[0].transpose(-1, -2) @ out[1]  # (T, S, 3, 3)
    cos = ((torch.diagonal(rel, dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return np.degrees(torch.arccos(cos).numpy())


def long_track_speed(stage: KinematicsStage, bodies: dict, frames: int = LONG_TRACK) -> tuple[float, float]:
    """Frames per second of NeurIK + fit and of OpenSim IK on one long track: the first view's
    markers played forwards and backwards until `frames` frames (a 30 s clip at 30 fps)."""
    tb = next(iter(bodies.values())).tracks[0]
    with tempfile.TemporaryDirectory(prefix="kinemesh-bench-long-") as tmp:
        names, markers, scaled = stage.subject(tb, Path(tmp))
        loop = np.concatenate([markers, markers[::-1]])
        long = np.concatenate([loop] * (frames // len(loop) + 1))[:frames]
        t_fit = _median_time(_served, stage, scaled.model, long, repeats=3)
        t0 = time.perf_counter()
        scaled.model.inverse_kinematics(long, names, 30.0)
        t_ik = time.perf_counter() - t0
    return frames / t_fit, frames / t_ik


def other_views(stage: KinematicsStage, bodies: dict) -> dict[str, float]:
    """Mean RMSE of NeurIK + fit against OpenSim IK on each of `bodies`' views (every track)."""
    idx = compared(stage)
    out = {}
    with tempfile.TemporaryDirectory(prefix="kinemesh-bench-other-") as tmp:
        for cam, res in bodies.items():
            got, want = [], []
            for tb in res.tracks:
                names, markers, scaled = stage.subject(tb, Path(tmp) / cam)
                want.append(scaled.model.inverse_kinematics(markers, names, 30.0).values[:, idx])
                got.append(_served(stage, scaled.model, markers)[0][:, idx])
            out[cam] = float(angle_rmse_deg(np.concatenate(got), np.concatenate(want), wrap=True).mean())
    return out


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
    every, body = real_views(clips, model_dir)
    bodies = {cam: every[cam] for cam in VIEWS}
    stage = KinematicsStage(model_dir, body.layer, body.bundle, body.backend)
    names = [stage.model.coordinate_names[i] for i in compared(stage)]
    print("kinematics: NeurIK vs OpenSim IK, held-out synthetic set ...", flush=True)
    synth, synth_fit = synthetic(stage)
    print("kinematics: NeurIK vs OpenSim IK, real views ...", flush=True)
    real = neurik_vs_opensim(stage, bodies)
    legs = [i for i, n in enumerate(names) if not n.startswith(("arm_", "elbow_", "pro_sup"))]
    lower = [i for i, n in enumerate(names) if n.removesuffix("_r").removesuffix("_l") in LOWER_LIMB]

    def r2(x: float) -> float:
        return round(float(x), 2)

    out: dict[str, float] = {
        "neurik_rmse_deg_mean_synth": r2(synth.mean()),
        "neurik_rmse_deg_mean_real": r2(real["network"].mean()),
        "neurik_rmse_deg_max_lower_limb": r2(max(synth[lower].max(), real["network"][lower].max())),
        "neurik_rmse_deg_mean_real_no_arms": r2(real["network"][legs].mean()),
        "neurik_rmse_deg_mean_real_no_ik_flips": r2(real["steady"].mean()),
        "neurik_speedup_vs_opensim": round(real["fps_network"] / real["fps_ik"], 1),
        "neurik_fps": round(real["fps_network"], 1), "opensim_ik_fps": round(real["fps_ik"], 1),
        "neurik_fit_rmse_deg_mean_synth": r2(synth_fit.mean()),
        "neurik_fit_rmse_deg_mean_real": r2(real["fit"].mean()),
        "neurik_fit_rmse_deg_max_lower_limb": r2(max(synth_fit[lower].max(), real["fit"][lower].max())),
        "neurik_fit_rmse_deg_mean_real_no_arms": r2(real["fit"][legs].mean()),
        **{f"neurik_{k}_rmse_deg_mean_real": r2(v.mean()) for k, v in real.items() if k.startswith("fit") and k != "fit"},
        "neurik_fit_marker_rms_vs_opensim": round(real["rms_ratio"], 3),
        "neurik_fit_sequential_rmse_deg_mean_real": r2(real["fit_sequential"].mean()),
        "neurik_fit_from_ik_rmse_deg_mean_real": r2(real["fit_from_ik"].mean()),
        "opensim_ik_backwards_rmse_deg_mean_real": r2(real["ik_backwards"].mean()),
        "opensim_ik_backwards_rmse_deg_mean_real_no_arms": r2(real["ik_backwards"][legs].mean()),
        "neurik_fit_arm_segment_deg_real": r2(real["segments_fit"].mean()),
        "opensim_ik_backwards_arm_segment_deg_real": r2(real["segments_backwards"].mean()),
        **{f"neurik_fit_rmse_deg_mean_{cam}": r2(v) for cam, v in other_views(
            stage, {cam: every[cam] for cam in OTHER_VIEWS}).items()},
        "neurik_fit_fps": round(real["fps_fit"], 1),
        "neurik_fit_speedup_vs_opensim": round(real["fps_fit"] / real["fps_ik"], 1),
    }
    fit_fps, ik_fps = long_track_speed(stage, bodies)
    out.update({"neurik_fit_fps_long_track": round(fit_fps, 1), "opensim_ik_fps_long_track": round(ik_fps, 1),
                "neurik_fit_speedup_vs_opensim_long_track": round(fit_fps / ik_fps, 1)})
    print(f"  {'':22s} {'synth':>6s} {'real':>6s} {'steady':>6s} | fitted: {'synth':>6s} {'real':>6s} | IK backwards")
    for k, n in enumerate(names):
        print(f"  {n:22s} {synth[k]:6.2f} {real['network'][k]:6.2f} {real['steady'][k]:6.2f} | "
              f"        {synth_fit[k]:6.2f} {real['fit'][k]:6.2f} | {real['ik_backwards'][k]:6.2f}")
    per_coordinate = {n: {"synth": r2(synth[k]), "real": r2(real["network"][k]), "real_no_ik_flips": r2(real["steady"][k]),
                          "fit_synth": r2(synth_fit[k]), "fit_real": r2(real["fit"][k]),
                          "opensim_ik_backwards_real": r2(real["ik_backwards"][k])} for k, n in enumerate(names)}
    for k, seg in enumerate(ARM_SEGMENTS):
        print(f"  {seg:10s} orientation vs IK (RMS deg): NeurIK + fit {real['segments_fit'][k]:6.2f}  "
              f"IK backwards {real['segments_backwards'][k]:6.2f}")
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
