"""2D-informed refinement of MQ-HMR's query tokens (BioPose): at inference, the decoder's output joint
queries of a whole track are optimised, the pose head frozen, so that the body they give projects
onto the 2D keypoints. The objective, the closed-form camera, the track's one shape and the
optimiser are GenHMR's refinement (`kinemesh.models.genhmr.refine.refine_track`, the same family);
only the variables differ: query tokens (T, 21, D) instead of token embeddings, and no codebook term.

Shape legend: T frames of one track, D decoder width, L = 33 landmarks, S shape coefficients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kinemesh.models.body.layer import BodyLayer
from kinemesh.models.genhmr.inference import BodyParams
from kinemesh.models.genhmr.refine import RefineConfig, RefineResult, refine_track
from kinemesh.models.mqhmr.model import BODY_JOINTS, MQHMROutput

# GenHMR's objective and schedule with a smaller step: a token moves a joint through the pose head's
# weights, and GenHMR's step (0.12, in codebook units) overshoots here (chosen on the synthetic case of
# `synthetic_start`, seed 41: reprojection drop 0.73 at 0.01-0.03 against 0.63 at 0.12, 20 steps).
MQHMR_REFINE = RefineConfig(lr=0.03)


def as_body_params(out: MQHMROutput) -> BodyParams:
    """MQ-HMR's outputs as the body parameters GenHMR's stages take (no token ids; confidence 1)."""
    T = out.body6d.shape[0]
    dev = out.body6d.device
    return BodyParams(torch.zeros(T, 0, dtype=torch.int64, device=dev), torch.ones(T, 1, device=dev), out.body6d,
                      out.orient6d, out.shape, out.camera)


def refine_queries(layer: BodyLayer, pose_head: nn.Module, out: MQHMROutput, keypoints: Tensor,
                   world: Tensor | None = None,
                   config: RefineConfig = MQHMR_REFINE, intrinsics: Tensor | None = None,
                   frame_index: Tensor | None = None) -> RefineResult:
    """Refine one track's MQ-HMR outputs `out` (T frames), through the model's frozen `pose_head`
    (`MQHMR.pose_head`; the worker loads it from the bundle), against its keypoints (T, L, 3) in crop-box units
    (and the world landmarks (T, L, 3), intrinsics (T, 3) and frame numbers (T,) as `refine_track`
    takes them). The result's `embeddings` are the refined joint queries (T, 21, D)."""
    return refine_track(layer, pose_head, None, as_body_params(out), keypoints, world, config,
                        intrinsics, frame_index, embeddings=out.tokens[:, :BODY_JOINTS])


def synthetic_start(pose_head: nn.Module, out: MQHMROutput, body6d: Tensor, orient6d: Tensor, shape: Tensor,
                    keypoints: Tensor, layer: BodyLayer, noise_deg: float = 15.0, shape_noise: float = 0.5,
                    seed: int = 0) -> MQHMROutput:
    """A synthetic case for the refinement: MQ-HMR outputs `out` (T frames) whose query tokens are moved,
    each the least distance, so that the model's own `pose_head` gives the true pose (body6d (T, 21, 6),
    orient6d (T, 6)) with every joint turned by a random rotation of `noise_deg` RMS degrees; the shape
    is the true shape (T, S) plus Gaussian noise of `shape_noise`; the camera is the least-squares
    weak-perspective camera of that body on the keypoints (T, L, 3): the start a trained but imperfect
    model would give, with its best camera."""
    from kinemesh.models.camera import fit_weak_perspective
    from kinemesh.models.genhmr.inference import full_rotations
    from kinemesh.models.rotations import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix

    g = torch.Generator().manual_seed(seed)
    T, J = body6d.shape[0], BODY_JOINTS
    truth = torch.cat([body6d, orient6d[:, None]], 1)  # (T, J + 1, 6)
    axis = torch.nn.functional.normalize(torch.randn(T, J + 1, 3, generator=g), dim=-1)
    angle = torch.randn(T, J + 1, 1, generator=g) * (noise_deg * torch.pi / 180)
    target = matrix_to_rot6d(rot6d_to_matrix(truth) @ axis_angle_to_matrix(axis * angle))  # (T, J + 1, 6)
    with torch.no_grad():
        tokens = out.tokens.clone()
        w = pose_head.linear.weight  # (6, D)
        miss = target - pose_head(tokens[:, :J + 1])  # (T, J + 1, 6)
        tokens[:, :J + 1] += miss @ torch.linalg.pinv(w).T  # least-norm move: the head now gives `target`
        rot = pose_head(tokens[:, :J + 1])
        noisy_shape = shape + shape_noise * torch.randn(shape.shape, generator=g)
        _, lm = layer.skeleton(full_rotations(rot[:, :J], rot[:, J]), noisy_shape, torch.zeros(T, 3))
        camera = fit_weak_perspective(lm, keypoints[..., :2], keypoints[..., 2])
    return MQHMROutput(rot[:, :J], rot[:, J], noisy_shape, camera, tokens)


def synthetic_case(layer: BodyLayer, frames: int = 64, seed: int = 41, model_seed: int = 0):
    """The refinement's synthetic case, as the test and the benchmarks use it: `frames` synthetic frames
    (`training.synth.generate`, `seed`), an untrained small MQ-HMR (`model_seed`) run on noise crops,
    and its outputs moved by `synthetic_start`. Returns (model, start, data)."""
    from kinemesh.models.registry import create_model
    from kinemesh.models.training.synth import generate

    S = layer.config.num_shape
    data = generate(layer, 1, frames, seed=seed, num_shape=S)
    torch.manual_seed(model_seed)
    model = create_model("mqhmr_small", shape_dim=S).eval()
    with torch.no_grad():
        out = model(torch.randn(frames, 3, 256, 192))
    start = synthetic_start(model.pose_head, out, data.body6d, data.orient6d, data.shape, data.keypoints, layer)
    return model, start, data
