"""Iterative confidence-based decoding (MaskGIT / GenHMR / MMHMR), with the loop in Python.

Shape legend:
    B  batch (people)
    N  pose tokens per person
    K  codebook size; id K is [MASK]
    L  keypoints (33)
    T  image tokens, C their width
    S  shape coefficients

`masked_decode` drives any `step_fn(token_ids, keypoints, image_tokens) -> (logits, shape, camera, orient)`:
the eager model (`TorchStepFn`) or one exported step graph in an inference backend
(`BackendStepFn`, e.g. `OrtBackend`), so PyTorch and ONNX Runtime decode with the same loop.

Algorithm (start: every position [MASK]). At iteration i = 1..I:
  1. predict logits for all positions from the current sequence;
  2. at each still-masked position pick a token (argmax when temperature = 0, else a sample from
     softmax(logits / temperature)) and its confidence = that token's probability;
  3. keep the most confident of these new predictions so that the number of masked positions
     left is round(N * cosine_mask_ratio(i / I)) (at least one fewer than before, zero at i = I);
     re-mask the rest (the least confident).
Once fixed, a token stays fixed: re-masking only ever chooses among the *newly* predicted tokens
(GenHMR / MaskGIT), which is what lets each iteration's decisions condition the next.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from kinemesh.models.backends.base import run_tensors

ArrayLike = Tensor | np.ndarray


def cosine_mask_ratio(t: float | Tensor) -> float | Tensor:
    """Fraction of tokens masked at progress t in [0, 1]: cos(pi / 2 * t); 1 at t = 0, 0 at t = 1."""
    if isinstance(t, Tensor):
        return torch.cos(0.5 * math.pi * t.clamp(0.0, 1.0))
    return math.cos(0.5 * math.pi * min(max(float(t), 0.0), 1.0))


def masked_counts(num_tokens: int, iterations: int) -> list[int]:
    """Masked positions left after each iteration: cosine schedule, strictly decreasing, ending at 0."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    if iterations > num_tokens:
        raise ValueError(f"{iterations} iterations cannot each fix a token of {num_tokens}")
    counts, left = [], num_tokens
    for i in range(1, iterations + 1):
        target = round(num_tokens * cosine_mask_ratio(i / iterations))
        # at least one new token per iteration, but leave enough masked for the iterations remaining
        left = max(min(target, left - 1), iterations - i)
        counts.append(left)
    return counts


class DecodeStep(NamedTuple):
    token_ids: Tensor  # (B, N) int64 after this iteration; K where still masked
    confidences: Tensor  # (B, N) probability each fixed token had when fixed; 0 where masked
    num_masked: int  # masked positions per person after this iteration


class DecodeResult(NamedTuple):
    token_ids: Tensor  # (B, N) int64, no [MASK] left
    confidences: Tensor  # (B, N) probability of each token at the iteration that fixed it
    shape: Tensor  # (B, S) from the last step call
    camera: Tensor  # (B, 3) from the last step call
    orient: Tensor  # (B, 6) root orientation (6D) from the last step call
    history: list[DecodeStep]  # one entry per iteration


StepFn = Callable[[Tensor, Tensor, Tensor | None], Any]


def _as_tensor(x: ArrayLike) -> Tensor:
    return torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x


def _unpack(out: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if isinstance(out, dict):
        out = (out["logits"], out["shape"], out["camera"], out["orient"])
    return tuple(_as_tensor(t).float() for t in out)  # type: ignore[return-value]


@torch.no_grad()
def masked_decode(
    step_fn: StepFn,
    keypoints: ArrayLike,
    image_tokens: ArrayLike | None = None,
    iterations: int = 5,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    num_tokens: int | None = None,
    mask_id: int | None = None,
    final_pass: bool = False,
) -> DecodeResult:
    """Decode pose tokens for keypoints (B, L, 3) [and image_tokens (B, T, C)].

    step_fn: (token_ids (B, N) int64, keypoints, image_tokens or None) -> (logits (B, N, K), shape,
        camera, orient) as a tuple, NamedTuple or dict, of torch tensors or numpy arrays.
    num_tokens / mask_id: N and K; read from `step_fn.num_tokens` / `step_fn.mask_id` when omitted
        (both adapters below carry them).
    temperature: 0 = argmax (deterministic); > 0 samples with `generator`.
    final_pass: run step_fn once more on the complete sequence so shape and camera see every token
        (one extra call); otherwise they come from the last iteration's call.
    """
    keypoints = _as_tensor(keypoints).float()
    image = None if image_tokens is None else _as_tensor(image_tokens).float()
    N = num_tokens if num_tokens is not None else step_fn.num_tokens  # type: ignore[attr-defined]
    K = mask_id if mask_id is not None else step_fn.mask_id  # type: ignore[attr-defined]
    B = keypoints.shape[0]
    ids = torch.full((B, N), K, dtype=torch.int64, device=keypoints.device)  # (B, N) all [MASK]
    conf = torch.zeros(B, N, device=keypoints.device)  # (B, N)
    history: list[DecodeStep] = []
    shape = camera = orient = None
    for left in masked_counts(N, iterations):
        logits, shape, camera, orient = _unpack(step_fn(ids, keypoints, image))  # (B,N,K) (B,S) (B,3) (B,6)
        logits = logits[..., :K]  # (B, N, K)
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)  # (B, N, K)
            picked = torch.multinomial(probs.reshape(B * N, K), 1, generator=generator).reshape(B, N)
            picked_conf = probs.gather(-1, picked.unsqueeze(-1)).squeeze(-1)  # (B, N)
        else:  # the argmax's probability, without materialising the (B, N, K) softmax
            top, picked = logits.max(dim=-1)  # (B, N) each
            picked_conf = torch.exp(top - torch.logsumexp(logits, dim=-1))  # (B, N)
        masked = ids == K  # (B, N)
        # rank only the new predictions; fixed tokens sort last (+inf) and so are never re-masked
        score = torch.where(masked, picked_conf, torch.full_like(picked_conf, math.inf))
        remask = torch.zeros_like(masked)
        if left > 0:
            lowest = score.topk(left, dim=1, largest=False).indices  # (B, left)
            remask.scatter_(1, lowest, True)
        newly = masked & ~remask  # (B, N)
        ids = torch.where(newly, picked, ids)
        conf = torch.where(newly, picked_conf, conf)
        history.append(DecodeStep(ids.clone(), conf.clone(), left))
    if final_pass:
        _, shape, camera, orient = _unpack(step_fn(ids, keypoints, image))
    assert shape is not None and camera is not None and orient is not None
    return DecodeResult(ids, conf, shape, camera, orient, history)


class TorchStepFn:
    """Eager adapter: calls `model.step` (a MaskedPoseTransformer) without gradients."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.num_tokens = model.cfg.num_tokens
        self.mask_id = model.cfg.codebook_size

    @torch.no_grad()
    def __call__(
        self, token_ids: Tensor, keypoints: Tensor, image_tokens: Tensor | None
    ) -> tuple[Tensor, ...]:
        return tuple(self.model.step(token_ids, keypoints, image_tokens))


class BackendStepFn:
    """Adapter over an inference backend (e.g. `OrtBackend`) for one step graph, on torch tensors of any
    device (`run_tensors`: IO binding on ONNX Runtime, so a CUDA decode stays on the GPU).

    The graph's inputs are token_ids, keypoints and (if the model has an image condition)
    image_tokens; its outputs logits, shape, camera, orient (see `MaskedPoseStepGraph`).
    `max_batch` splits a large batch into graph calls of at most that many people while the
    decoding loop still runs once over the whole batch: on a 2-core CPU ONNX Runtime is ~20 %
    faster per person at 32 than at 256 (the activations stay in cache); None = one call.
    """

    def __init__(self, backend: Any, graph: str, num_tokens: int, mask_id: int, max_batch: int | None = None) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.backend = backend
        self.graph = graph
        self.num_tokens = num_tokens
        self.mask_id = mask_id
        self.max_batch = max_batch

    def _run(self, token_ids: Tensor, keypoints: Tensor, image_tokens: Tensor | None) -> dict[str, Tensor]:
        feeds = {"token_ids": token_ids, "keypoints": keypoints}
        if image_tokens is not None:
            feeds["image_tokens"] = image_tokens
        return run_tensors(self.backend, self.graph, feeds)

    def __call__(
        self, token_ids: Tensor, keypoints: Tensor, image_tokens: Tensor | None
    ) -> dict[str, Tensor]:
        B = token_ids.shape[0]
        if self.max_batch is None or B <= self.max_batch:
            return self._run(token_ids, keypoints, image_tokens)
        parts = [self._run(token_ids[i:i + self.max_batch], keypoints[i:i + self.max_batch],
                           None if image_tokens is None else image_tokens[i:i + self.max_batch])
                 for i in range(0, B, self.max_batch)]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
