"""The training loops the body and hand models share: a VQ pose tokenizer, then a masked token
transformer on top of it. Each caller seeds, builds the model and supplies its geometry (the body's
joints or the hand's keypoints by forward kinematics); the loops own the optimiser, schedule, batches
and logging, so both models are trained the same way."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kinemesh.models.genhmr import masked_token_loss


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up to `peak`, then a cosine decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_tokenizer(tok: torch.nn.Module, poses: Tensor, geometry: Callable[[Tensor, Tensor], Tensor],
                    geometry_weight: float, steps: int, batch: int, seed: int, log, label: str = "joints") -> None:
    """Train `tok` on rotations (P, J, 6): L1 on the 6D values, `geometry_weight` x geometry(recon, x)
    (metres), the VQ losses; dead codes reset from the batch every 100 steps."""
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, 1e-3)
        x = poses[torch.randint(0, len(poses), (batch,), generator=g)]
        tok.train()
        out = tok(x)
        error = geometry(out.recon, x)
        loss = F.l1_loss(out.recon, x) + geometry_weight * error + out.commit_loss + out.codebook_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99:
            reset = tok.reset_dead_codes(out.z_e.detach(), g)
            log(f"tokenizer {step + 1}/{steps} loss {loss.item():.4f} {label} {error.item() * 1000:.1f} mm "
                f"perplexity {float(out.perplexity):.0f} reset {reset}")
    tok.eval()


def train_masked_transformer(model: torch.nn.Module, tok: torch.nn.Module, ids: Tensor, keypoints: Tensor,
                             targets: dict[str, Tensor], geometry: Callable[[Tensor, Tensor], Tensor],
                             geometry_weight: float, steps: int, batch: int, seed: int, log,
                             peak_lr: float = 1e-3) -> None:
    """Train `model` to predict the token ids (P, N) of `tok` from keypoints (P, L, 3), with the
    shape, camera and orientation `targets` (P, ...), plus `geometry_weight` x geometry(poses, rows):
    the expected code embedding at the masked positions (softmax over the codebook) through the frozen
    decoder should give the right geometry, which rewards tokens near the target's when the exact
    code is missed. `peak_lr`: the schedule's top (lower to continue a trained model)."""
    for p in tok.parameters():
        p.requires_grad_(False)
    codebook = tok.codebook.detach()  # (K, D)
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, peak_lr)
        idx = torch.randint(0, len(ids), (batch,), generator=g)
        out = masked_token_loss(model, ids[idx], keypoints[idx], None, g, shape_target=targets["shape"][idx],
                                camera_target=targets["camera"][idx], orient_target=targets["orient"][idx],
                                shape_weight=0.5, camera_weight=1.0, orient_weight=2.0, label_smoothing=0.1)
        soft = out.logits.softmax(-1) @ codebook  # (B, N, D)
        z = torch.where(out.mask[..., None], soft, codebook[ids[idx]])  # (B, N, D)
        error = geometry(tok.decode_embeddings(z), idx)
        total = out.total + geometry_weight * error
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 99:
            log(f"transformer {step + 1}/{steps} loss {total.item():.3f} ce {out.token_ce.item():.3f} "
                f"acc {out.accuracy.item():.3f} geometry {error.item() * 1000:.1f} mm shape {out.shape.item():.3f} "
                f"cam {out.camera.item():.4f} orient {out.orient.item():.4f}")
    model.eval()
