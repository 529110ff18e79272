"""From keypoints to body parameters: iterative token decoding, then the tokenizer's decoder.

Shape legend: B people (or frames of one track), N tokens, D code width, L = 33 landmarks,
S shape coefficients, J = 24 SMPL-order joints.

Both halves run over PyTorch or an inference backend (the exported step graph and the exported
index decoder), so training, tests and the worker share this code.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from kinemesh.models.backends.base import run_tensors
from kinemesh.models.genhmr.decoding import ArrayLike, StepFn, masked_decode
from kinemesh.models.rotations import rot6d_to_matrix


class BodyParams(NamedTuple):
    token_ids: Tensor  # (B, N) int64
    confidences: Tensor  # (B, N) token confidences from decoding
    body6d: Tensor  # (B, 21, 6) body pose below the root
    orient6d: Tensor  # (B, 6) root orientation in the camera frame
    shape: Tensor  # (B, S)
    camera: Tensor  # (B, 3) weak perspective (s, tx, ty) in person-box units


class TorchDecoder:
    """token ids (B, N) -> body6d (B, J', 6) with an eager tokenizer."""

    def __init__(self, tokenizer: torch.nn.Module) -> None:
        self.tokenizer = tokenizer.eval()

    @torch.no_grad()
    def __call__(self, token_ids: Tensor) -> Tensor:
        return self.tokenizer.decode_indices(token_ids)


class BackendDecoder:
    """token ids (B, N) -> body6d through a backend's exported index-decoder graph (input "indices"), on
    the ids' device."""

    def __init__(self, backend: Any, graph: str) -> None:
        self.backend = backend
        self.graph = graph

    def __call__(self, token_ids: Tensor) -> Tensor:
        out = run_tensors(self.backend, self.graph, {"indices": token_ids})
        return next(iter(out.values())).float()


def predict_bodies(step_fn: StepFn, decoder: Any, keypoints: ArrayLike, iterations: int = 5,
                   image_tokens: ArrayLike | None = None, final_pass: bool = False) -> BodyParams:
    """keypoints (B, L, 3) box-normalised (see `kinemesh.models.camera`) -> BodyParams.

    Shape, camera and orientation come from the last iteration's call (final_pass=False, the
    default: one graph call fewer; the refinement re-solves the camera and refines the orientation)
    or from an extra call on the complete token sequence.
    """
    res = masked_decode(step_fn, keypoints, image_tokens, iterations=iterations, final_pass=final_pass)
    body6d = decoder(res.token_ids)
    return BodyParams(res.token_ids, res.confidences, body6d, res.orient, res.shape, res.camera)


def segments(frame_index: Tensor | np.ndarray | None, length: int) -> list[slice]:
    """Runs of consecutive frame indices (T,) as slices of the track's rows; one run when None."""
    if frame_index is None or length < 2:
        return [slice(0, length)]
    idx = torch.as_tensor(np.asarray(frame_index), dtype=torch.int64)
    cuts = ((idx[1:] - idx[:-1]) != 1).nonzero().flatten() + 1  # rows starting a new run
    bounds = [0, *cuts.tolist(), length]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def predict_track(step_fn: StepFn, decoder: Any, keypoints: Tensor, iterations: int = 5, stride: int = 1,
                  chunk: int = 256, frame_index: Tensor | np.ndarray | None = None,
                  image_tokens: Any = None) -> BodyParams:
    """Decode one track's frames (T, L, 3): every `stride`-th frame and the last one through
    `predict_bodies` (in chunks of `chunk` frames); the frames between take the nearest decoded
    frame's parameters. The refinement starts from a temporally smoothed copy and fits every frame
    to its own keypoints, so at stride 2 (30 fps) it loses little and the decoding halves.
    With `frame_index` (T,), each run of consecutive frames gets its own keyframes (its first and
    last among them), so no frame borrows a body from the other side of a gap. `image_tokens`, for an
    image-conditioned model: a function from the rows of a chunk of keyframes (K,) int64 to their
    image tokens (K, T, C), so that only keyframes go through the image backbone."""
    if stride < 1:
        raise ValueError("stride must be at least 1")
    T = keypoints.shape[0]
    runs = segments(frame_index, T)
    keys = torch.unique(torch.cat([torch.arange(r.start, r.stop, stride) for r in runs]
                                  + [torch.tensor([r.stop - 1]) for r in runs]))  # (K,) sorted
    parts = [predict_bodies(step_fn, decoder, keypoints[keys[i:i + chunk]], iterations,
                            None if image_tokens is None else image_tokens(keys[i:i + chunk]))
             for i in range(0, len(keys), chunk)]
    decoded = BodyParams(*(torch.cat(t) for t in zip(*parts, strict=True)))
    if len(keys) == T:
        return decoded
    run_of = torch.zeros(T, dtype=torch.int64)  # (T,) which run each row is in
    for i, r in enumerate(runs):
        run_of[r] = i
    dist = (torch.arange(T)[:, None] - keys[None, :]).abs().float()  # (T, K)
    dist[run_of[:, None] != run_of[keys][None, :]] = float("inf")  # only keyframes of the same run
    nearest = dist.argmin(1)  # (T,) index into keys
    return BodyParams(*(t[nearest] for t in decoded))


def full_rotations(body6d: Tensor, orient6d: Tensor) -> Tensor:
    """Root (B, 6) + 21 body joints (B, 21, 6) -> (B, 24, 3, 3), the two hand joints at rest."""
    B = body6d.shape[0]
    eye = torch.eye(3, dtype=body6d.dtype, device=body6d.device).expand(B, 1, 3, 3)
    return torch.cat([rot6d_to_matrix(orient6d)[:, None], rot6d_to_matrix(body6d), eye, eye], 1)


def as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
