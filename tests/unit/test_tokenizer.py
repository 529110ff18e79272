"""Pose tokenizer invariants: shapes, index range, decoder paths agree, losses, gradients,
dead-code reset, and a short overfit that must lower reconstruction error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kinemesh.models.registry import create_model
from kinemesh.models.rotations import axis_angle_to_rot6d
from kinemesh.models.tokenizer import PoseTokenizer, PoseTokenizerConfig

TINY = dict(num_tokens=8, codebook_size=32, code_dim=16, token_width=8, hidden_dim=64, num_blocks=1)


def _poses(b: int, joints: int = 22, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return axis_angle_to_rot6d(0.5 * torch.randn(b, joints, 3, generator=g))  # (B, J, 6)


@pytest.mark.parametrize("ema_decay", [0.99, 0.0])
def test_shapes_and_ranges(ema_decay: float) -> None:
    torch.manual_seed(0)
    tok = create_model("pose_tokenizer_small", ema_decay=ema_decay)
    cfg = tok.cfg
    x = _poses(4)
    out = tok(x)
    assert out.recon.shape == (4, cfg.joints, 6)
    assert out.indices.shape == (4, cfg.num_tokens) and out.indices.dtype == torch.int64
    assert out.z_e.shape == (4, cfg.num_tokens, cfg.code_dim)
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < cfg.codebook_size
    for loss in (out.commit_loss, out.codebook_loss, out.perplexity):
        assert loss.shape == () and torch.isfinite(loss)
    assert 1.0 <= float(out.perplexity) <= cfg.codebook_size
    if ema_decay == 0.0:
        assert float(out.codebook_loss.detach()) > 0
    idx, z_e = tok.encode(x)
    assert idx.shape == (4, cfg.num_tokens) and z_e.shape == out.z_e.shape


def test_paper_preset_shapes() -> None:
    tok = create_model("pose_tokenizer_paper").eval()
    idx, z_e = tok.encode(_poses(2))
    assert idx.shape == (2, 160) and z_e.shape == (2, 160, 256) and tok.codebook.shape == (2048, 256)
    assert tok.decode_indices(idx).shape == (2, 22, 6)


def test_decode_paths_agree() -> None:
    tok = PoseTokenizer(PoseTokenizerConfig(**TINY)).eval()
    idx, _ = tok.encode(_poses(3))
    torch.testing.assert_close(tok.decode_indices(idx), tok.decode_embeddings(tok.codebook[idx]))
    # forward in eval mode reconstructs exactly what decoding its own indices gives
    out = tok(_poses(3))
    torch.testing.assert_close(out.recon, tok.decode_indices(out.indices))


def test_quantize_is_nearest_code() -> None:
    tok = PoseTokenizer(PoseTokenizerConfig(**TINY)).eval()
    z = torch.randn(2, 8, 16)
    q = tok.quantize(z)
    brute = torch.cdist(z.reshape(-1, 16), tok.codebook).argmin(dim=1).reshape(2, 8)
    assert torch.equal(q.indices, brute)
    torch.testing.assert_close(q.z_q, tok.codebook[brute])  # straight-through keeps the forward value
    torch.testing.assert_close(q.commit_loss, tok.cfg.commitment_beta * F.mse_loss(z, tok.codebook[brute]))


def test_straight_through_gradient_reaches_encoder() -> None:
    tok = PoseTokenizer(PoseTokenizerConfig(**TINY)).train()
    out = tok(_poses(4))
    F.mse_loss(out.recon, _poses(4)).backward()  # reconstruction loss only: gradient must pass the quantizer
    grads = [p.grad for p in tok.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert tok.codebook.grad is None  # EMA codebook is not trained by gradient


def test_ema_moves_used_codes_only_in_training() -> None:
    tok = PoseTokenizer(PoseTokenizerConfig(**TINY))
    before = tok.codebook.detach().clone()
    tok.eval()(_poses(4))
    assert torch.equal(tok.codebook, before)  # eval: no side effects
    out = tok.train()(_poses(4))
    used = torch.zeros(32, dtype=torch.bool)
    used[out.indices.unique()] = True
    changed = (tok.codebook.detach() - before).abs().sum(dim=1) > 0
    assert bool(changed[used].all())


def test_dead_code_reset_replaces_unused_codes() -> None:
    cfg = PoseTokenizerConfig(**TINY, dead_code_steps=3)
    tok = PoseTokenizer(cfg).train()
    x = _poses(2)
    with torch.no_grad():
        for _ in range(3):
            out = tok(x)
    used = torch.zeros(cfg.codebook_size, dtype=torch.bool)
    used[out.indices.unique()] = True
    dead = tok.dead_codes()
    assert bool(dead.any()) and not bool(dead[used].any())
    before = tok.codebook.detach().clone()
    with torch.no_grad():
        z_e = tok.embed(x)
    n = tok.reset_dead_codes(z_e, generator=torch.Generator().manual_seed(0))
    assert n == int(dead.sum())
    after = tok.codebook.detach()
    assert torch.equal(after[~dead], before[~dead])
    # every replaced code is now one of the encoder outputs
    pool = z_e.reshape(-1, cfg.code_dim)
    assert bool(((after[dead, None] - pool[None]).abs().sum(dim=-1).min(dim=1).values == 0).all())
    assert not bool(tok.dead_codes().any()) and int(tok.steps_unused[dead].sum()) == 0
    assert tok.reset_dead_codes(z_e) == 0


def test_short_overfit_lowers_reconstruction_error() -> None:
    torch.manual_seed(0)
    cfg = PoseTokenizerConfig(**TINY, dead_code_steps=10)
    tok = PoseTokenizer(cfg).train()
    x = _poses(32, seed=1)
    opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=3e-3)

    def recon_error() -> float:
        with torch.no_grad():
            return float(F.mse_loss(tok.eval()(x).recon, x))

    start = recon_error()
    for step in range(150):
        tok.train()
        out = tok(x)
        loss = F.mse_loss(out.recon, x) + out.commit_loss + out.codebook_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:
            tok.reset_dead_codes(out.z_e)
    end = recon_error()
    assert end < 0.25 * start, (start, end)  # about 0.16 -> 0.002 on this seed
