"""Pose tokenizer: a VQ-VAE turning J joint rotations (6D) into N discrete tokens (GenHMR, after TokenHMR).

Shape legend:
    B  batch (poses)
    J  joints (config.joints; 22 = SMPL body joints without the two hands)
    R  rotation width (config.rot_dim = 6, the continuous 6D representation)
    N  tokens per pose (config.num_tokens)
    K  codebook size (config.codebook_size)
    D  code width (config.code_dim)
    W  per-token bottleneck width inside encoder/decoder (config.token_width)
    H  hidden width of the residual MLPs (config.hidden_dim)

Encoder: (B, J, R) -> flatten -> residual MLP -> (B, N, W) -> per-token linear -> z_e (B, N, D).
Quantizer: nearest code in a K x D codebook, straight-through gradient, commitment loss; the
codebook learns either by EMA (k-means style, default) or by its own loss (ema_decay = 0).
Decoder: (B, N, D) -> per-token linear -> (B, N * W) -> residual MLP -> (B, J, R).
The decoder is also called on continuous embeddings (`decode_embeddings`): GenHMR's 2D-guided
refinement optimises those directly while the decoder stays frozen.

Codes that no pose selected for `dead_code_steps` consecutive training steps are re-initialised
from random encoder outputs by `reset_dead_codes` (the training loop decides when to call it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# 6D of the identity rotation (first two columns of I); the decoder starts out predicting it.
_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class PoseTokenizerConfig:
    joints: int = 22  # J: joint rotations per pose (SMPL body joints incl. pelvis, no hands)
    rot_dim: int = 6  # R: values per joint rotation (6D, Zhou et al. 2019)
    num_tokens: int = 32  # N: discrete tokens per pose (paper: 160)
    codebook_size: int = 512  # K: codebook entries (paper: 2048)
    code_dim: int = 64  # D: width of a codebook entry (paper: 256)
    token_width: int = 16  # W: per-token bottleneck width between the MLP trunk and the codes
    hidden_dim: int = 512  # H: width of the encoder/decoder residual MLPs
    num_blocks: int = 2  # residual MLP blocks in each of encoder and decoder
    dropout: float = 0.0  # dropout inside the residual blocks (training only)
    commitment_beta: float = 0.25  # weight of ||z_e - sg(z_q)||^2 (VQ-VAE's beta)
    ema_decay: float = 0.99  # EMA codebook update decay; 0 = learn the codebook by gradient instead
    ema_epsilon: float = 1e-5  # Laplace smoothing of EMA cluster sizes (avoids division by zero)
    dead_code_steps: int = 100  # a code unused for this many consecutive training steps counts as dead


class Quantized(NamedTuple):
    z_q: Tensor  # (B, N, D) quantised embeddings, straight-through: gradient flows to z_e
    indices: Tensor  # (B, N) int64 code indices
    commit_loss: Tensor  # () beta * mean ||z_e - sg(z_q)||^2
    codebook_loss: Tensor  # () mean ||sg(z_e) - z_q||^2 when learnt by gradient, else 0 (EMA)
    perplexity: Tensor  # () exp(entropy) of this batch's code usage, in [1, K]


class TokenizerOutput(NamedTuple):
    recon: Tensor  # (B, J, R) reconstructed 6D rotations
    indices: Tensor  # (B, N) int64
    z_e: Tensor  # (B, N, D) continuous encoder output
    commit_loss: Tensor  # ()
    codebook_loss: Tensor  # ()
    perplexity: Tensor  # ()


class ResidualBlock(nn.Module):
    """Pre-norm MLP block: x + W2 gelu(W1 norm(x))."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, H) -> (B, H)
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.norm(x)))))


class PoseEncoder(nn.Module):
    def __init__(self, cfg: PoseTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(cfg.joints * cfg.rot_dim, cfg.hidden_dim)
        self.blocks = nn.Sequential(
            *(ResidualBlock(cfg.hidden_dim, cfg.dropout) for _ in range(cfg.num_blocks))
        )
        self.norm = nn.LayerNorm(cfg.hidden_dim)
        self.to_tokens = nn.Linear(cfg.hidden_dim, cfg.num_tokens * cfg.token_width)
        self.to_code = nn.Linear(cfg.token_width, cfg.code_dim)

    def forward(self, rot6d: Tensor) -> Tensor:
        cfg = self.cfg
        x = rot6d.reshape(rot6d.shape[0], cfg.joints * cfg.rot_dim)  # (B, J*R)
        x = self.norm(self.blocks(self.inp(x)))  # (B, H)
        x = self.to_tokens(x).reshape(-1, cfg.num_tokens, cfg.token_width)  # (B, N, W)
        return self.to_code(F.gelu(x))  # (B, N, D)


class PoseDecoder(nn.Module):
    def __init__(self, cfg: PoseTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.from_code = nn.Linear(cfg.code_dim, cfg.token_width)
        self.inp = nn.Linear(cfg.num_tokens * cfg.token_width, cfg.hidden_dim)
        self.blocks = nn.Sequential(
            *(ResidualBlock(cfg.hidden_dim, cfg.dropout) for _ in range(cfg.num_blocks))
        )
        self.norm = nn.LayerNorm(cfg.hidden_dim)
        self.out = nn.Linear(cfg.hidden_dim, cfg.joints * cfg.rot_dim)
        # Start near the rest pose: small output weights (not zero, so gradients reach the encoder
        # from step one) and an identity-rotation bias.
        with torch.no_grad():
            self.out.weight.mul_(0.01)
            if cfg.rot_dim == len(_IDENTITY_6D):
                self.out.bias.copy_(torch.tensor(_IDENTITY_6D).repeat(cfg.joints))

    def forward(self, z: Tensor) -> Tensor:
        cfg = self.cfg
        x = F.gelu(self.from_code(z))  # (B, N, W)
        x = x.reshape(-1, cfg.num_tokens * cfg.token_width)  # (B, N*W)
        x = self.norm(self.blocks(self.inp(x)))  # (B, H)
        return self.out(x).reshape(-1, cfg.joints, cfg.rot_dim)  # (B, J, R)


class PoseTokenizer(nn.Module):
    """VQ-VAE pose tokenizer. See the module docstring for shapes and behaviour."""

    def __init__(self, cfg: PoseTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = PoseEncoder(cfg)
        self.decoder = PoseDecoder(cfg)
        K, D = cfg.codebook_size, cfg.code_dim
        use_ema = cfg.ema_decay > 0
        codebook = torch.randn(K, D) / D**0.5
        self.codebook = nn.Parameter(codebook, requires_grad=not use_ema)  # (K, D)
        # EMA statistics (unused when the codebook learns by gradient, kept for one state-dict layout)
        self.register_buffer("ema_cluster_size", torch.ones(K))  # (K,)
        self.register_buffer("ema_embed_sum", codebook.clone())  # (K, D)
        # Usage: consecutive training steps without a selection, and selections since (re)init.
        self.register_buffer("steps_unused", torch.zeros(K, dtype=torch.long))  # (K,)
        self.register_buffer("code_counts", torch.zeros(K, dtype=torch.long))  # (K,)

    # -- encoder side ---------------------------------------------------------------------------

    def embed(self, rot6d: Tensor) -> Tensor:
        """(B, J, R) -> z_e (B, N, D), continuous (before quantisation)."""
        return self.encoder(rot6d)

    def nearest_codes(self, z: Tensor) -> Tensor:
        """(B, N, D) -> (B, N) int64 index of the nearest codebook entry (squared L2). No side effects."""
        B, N, D = z.shape
        flat = z.reshape(B * N, D)  # (B*N, D)
        cb = self.codebook
        dist = (
            flat.pow(2).sum(dim=1, keepdim=True) - 2.0 * flat @ cb.t() + cb.pow(2).sum(dim=1).unsqueeze(0)
        )  # (B*N, K)
        return dist.argmin(dim=1).reshape(B, N)  # (B, N)

    def encode(self, rot6d: Tensor) -> tuple[Tensor, Tensor]:
        """(B, J, R) -> (indices (B, N) int64, z_e (B, N, D)). Inference path: updates no statistics."""
        z_e = self.embed(rot6d)
        return self.nearest_codes(z_e), z_e

    def quantize(self, z_e: Tensor) -> Quantized:
        """Quantise z_e (B, N, D). In training mode also updates usage (and the EMA codebook)."""
        cfg = self.cfg
        indices = self.nearest_codes(z_e)  # (B, N)
        z_q = F.embedding(indices, self.codebook)  # (B, N, D)
        commit_loss = cfg.commitment_beta * F.mse_loss(z_e, z_q.detach())
        if cfg.ema_decay > 0:
            codebook_loss = z_e.new_zeros(())
        else:
            codebook_loss = F.mse_loss(z_q, z_e.detach())
        counts = torch.bincount(indices.reshape(-1), minlength=cfg.codebook_size)  # (K,)
        probs = counts.to(z_e.dtype) / counts.sum().clamp_min(1)
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        if self.training:
            self._update_usage(counts)
            if cfg.ema_decay > 0:
                self._ema_update(z_e.detach(), indices, counts)
        z_q = z_e + (z_q - z_e).detach()  # straight-through estimator
        return Quantized(z_q, indices, commit_loss, codebook_loss, perplexity)

    @torch.no_grad()
    def _update_usage(self, counts: Tensor) -> None:
        used = counts > 0
        self.steps_unused.add_(1).masked_fill_(used, 0)
        self.code_counts.add_(counts)

    @torch.no_grad()
    def _ema_update(self, z_e: Tensor, indices: Tensor, counts: Tensor) -> None:
        cfg = self.cfg
        decay, K = cfg.ema_decay, cfg.codebook_size
        flat = z_e.reshape(-1, cfg.code_dim)  # (B*N, D)
        sums = torch.zeros_like(self.ema_embed_sum).index_add_(0, indices.reshape(-1), flat)  # (K, D)
        self.ema_cluster_size.mul_(decay).add_(counts.to(flat.dtype), alpha=1 - decay)
        self.ema_embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
        n = self.ema_cluster_size.sum()
        size = (self.ema_cluster_size + cfg.ema_epsilon) / (n + K * cfg.ema_epsilon) * n  # (K,)
        self.codebook.data.copy_(self.ema_embed_sum / size.unsqueeze(1))

    @torch.no_grad()
    def dead_codes(self) -> Tensor:
        """(K,) bool: codes unused for at least `dead_code_steps` training steps."""
        return self.steps_unused >= self.cfg.dead_code_steps

    @torch.no_grad()
    def reset_dead_codes(self, z_e: Tensor, generator: torch.Generator | None = None) -> int:
        """Re-initialise dead codes from random rows of z_e (B, N, D); returns how many were reset."""
        dead = self.dead_codes().nonzero().squeeze(1)  # (M,)
        m = int(dead.numel())
        if m == 0:
            return 0
        pool = z_e.detach().reshape(-1, self.cfg.code_dim)  # (B*N, D)
        if pool.shape[0] >= m:
            pick = torch.randperm(pool.shape[0], generator=generator, device="cpu")[:m]
        else:
            pick = torch.randint(pool.shape[0], (m,), generator=generator, device="cpu")
        new = pool[pick.to(pool.device)].to(self.codebook.dtype)  # (M, D)
        self.codebook.data[dead] = new
        self.ema_embed_sum[dead] = new
        self.ema_cluster_size[dead] = 1.0
        self.steps_unused[dead] = 0
        self.code_counts[dead] = 0
        return m

    # -- decoder side ---------------------------------------------------------------------------

    def decode_embeddings(self, z: Tensor) -> Tensor:
        """Continuous embeddings (B, N, D) -> rot6d (B, J, R). Used by refinement with z free."""
        return self.decoder(z)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code indices (B, N) int64 -> rot6d (B, J, R)."""
        return self.decoder(F.embedding(indices, self.codebook))  # (B, N, D) -> (B, J, R)

    def forward(self, rot6d: Tensor) -> TokenizerOutput:
        """(B, J, R) -> reconstruction and losses; the training step."""
        z_e = self.embed(rot6d)
        q = self.quantize(z_e)
        recon = self.decode_embeddings(q.z_q)
        return TokenizerOutput(recon, q.indices, z_e, q.commit_loss, q.codebook_loss, q.perplexity)


# -- export views: one graph per inference entry point, tensors in, tuple out -------------------


class TokenizerEncoderGraph(nn.Module):
    """rot6d (B, J, R) -> (indices (B, N) int64, z_e (B, N, D))."""

    def __init__(self, tokenizer: PoseTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, rot6d: Tensor) -> tuple[Tensor, Tensor]:
        return self.tokenizer.encode(rot6d)


class TokenizerIndexDecoderGraph(nn.Module):
    """indices (B, N) int64 -> rot6d (B, J, R)."""

    def __init__(self, tokenizer: PoseTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, indices: Tensor) -> Tensor:
        return self.tokenizer.decode_indices(indices)


class TokenizerEmbeddingDecoderGraph(nn.Module):
    """embeddings (B, N, D) -> rot6d (B, J, R)."""

    def __init__(self, tokenizer: PoseTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.tokenizer.decode_embeddings(embeddings)
