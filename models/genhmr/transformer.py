"""Masked pose transformer (GenHMR): predicts pose-token ids, body shape and camera from a partially
masked token sequence, conditioned on 2D keypoints (graph encoder, after MMHMR) and optionally on
image tokens (cross-attention, e.g. ViT-H/16 at 256x192 -> 16x12 = 192 tokens of width 1280).

Shape legend:
    B  batch (people)
    N  pose tokens per person (config.num_tokens; must match the tokenizer)
    K  codebook size (config.codebook_size); id K is [MASK]
    L  keypoints (config.num_keypoints = 33 BlazePose landmarks)
    P  values per keypoint (3: x, y normalised to the person box, confidence in [0, 1])
    G  graph-encoder hidden width (config.graph_dim)
    D  transformer width (config.dim)
    T  image tokens (config.image_tokens)
    C  image-token width (config.image_dim; 0 = no image condition)
    S  shape coefficients (config.shape_dim)
    Q  1 + L + N: sequence length inside the transformer ([GLOBAL] + keypoint tokens + pose tokens)

Conditioning choices:
  * Keypoints are always an input. The graph encoder's L per-joint outputs are *prepended* to the
    pose tokens (not cross-attended): only 33 extra tokens, and self-attention lets pose tokens and
    joints exchange information in both directions at every layer, which is what ties each pose
    token to the joints it explains. A missing keypoint has confidence 0; an image-only call feeds
    all-zero keypoints (every confidence 0), so "no keypoints" needs no second graph.
  * Image tokens (T up to a few hundred, width C = 1280) enter by cross-attention in every block,
    projected once to D, so the self-attention sequence stays short whatever the backbone.
  * A learned [GLOBAL] token leads the sequence; the shape, camera and root-orientation heads
    read its output (the body pose below the root is the tokens').

`step` is one decoding step; the loop and schedule live in Python (`decoding.py`), so one step is
one exported graph (`MaskedPoseStepGraph`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kinemesh.models.landmarks import BLAZEPOSE_LANDMARKS


@dataclass
class MaskedPoseTransformerConfig:
    num_tokens: int = 32  # N: pose tokens per person; equals the tokenizer's num_tokens (paper: 160)
    codebook_size: int = 512  # K: token vocabulary; equals the tokenizer's codebook_size (paper: 2048)
    dim: int = 256  # D: transformer width
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads (dim must divide by heads)
    mlp_ratio: float = 4.0  # feed-forward hidden width = mlp_ratio * dim
    dropout: float = 0.0  # dropout on attention weights, MLP and embeddings (training only)
    num_keypoints: int = 33  # L: 2D keypoints; the skeleton's count (33 BlazePose landmarks, 21 hand keypoints)
    skeleton: str = "blazepose"  # the keypoint graph: "blazepose" (the body) or "hand21" (MMHMR's hand)
    keypoint_dim: int = 3  # P: per keypoint (x, y) normalised to the person box + confidence
    graph_layers: int = 2  # graph-convolution layers in the keypoint encoder
    graph_dim: int = 128  # G: hidden width of the keypoint graph encoder
    image_dim: int = 0  # C: image-token width; 0 = no image condition (1280 for ViT-H/16)
    image_tokens: int = 192  # T: image tokens expected (16 x 12 for ViT-H/16 at 256 x 192); unused if C = 0
    shape_dim: int = 32  # S: shape coefficients (32 = the project's Anny shape file; 10 for SMPL)
    camera_dim: int = 3  # weak-perspective camera (s, tx, ty)
    orient_dim: int = 6  # global (root) orientation in the camera frame, 6D; body pose is the tokens'


class StepOutput(NamedTuple):
    logits: Tensor  # (B, N, K) unnormalised token scores (the [MASK] id is never predicted)
    shape: Tensor  # (B, S) shape coefficients
    camera: Tensor  # (B, 3) weak-perspective (s, tx, ty)
    orient: Tensor  # (B, 6) root orientation in the camera frame, 6D (first two matrix columns)


# -- the BlazePose skeleton -----------------------------------------------------------------------

# Edges by landmark name: MediaPipe's pose connections, plus ear-shoulder and mouth-shoulder links
# so the face is not a separate component (a graph encoder needs one connected skeleton for face
# evidence to reach the body and vice versa).
_BLAZEPOSE_EDGE_NAMES: tuple[tuple[str, str], ...] = (
    # face
    ("nose", "left_eye_inner"),
    ("left_eye_inner", "left_eye"),
    ("left_eye", "left_eye_outer"),
    ("left_eye_outer", "left_ear"),
    ("nose", "right_eye_inner"),
    ("right_eye_inner", "right_eye"),
    ("right_eye", "right_eye_outer"),
    ("right_eye_outer", "right_ear"),
    ("mouth_left", "mouth_right"),
    ("nose", "mouth_left"),
    ("nose", "mouth_right"),
    # face to torso
    ("left_ear", "left_shoulder"),
    ("right_ear", "right_shoulder"),
    ("mouth_left", "left_shoulder"),
    ("mouth_right", "right_shoulder"),
    # torso
    ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_hip", "right_hip"),
    # arms and hands
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"),
    ("left_wrist", "left_pinky"),
    ("left_wrist", "left_index"),
    ("left_wrist", "left_thumb"),
    ("left_pinky", "left_index"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
    ("right_wrist", "right_pinky"),
    ("right_wrist", "right_index"),
    ("right_wrist", "right_thumb"),
    ("right_pinky", "right_index"),
    # legs and feet
    ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"),
    ("left_ankle", "left_heel"),
    ("left_heel", "left_foot_index"),
    ("left_ankle", "left_foot_index"),
    ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"),
    ("right_ankle", "right_heel"),
    ("right_heel", "right_foot_index"),
    ("right_ankle", "right_foot_index"),
)


def blazepose_edges() -> list[tuple[int, int]]:
    """The skeleton's undirected edges as (i, j) indices into BLAZEPOSE_LANDMARKS."""
    index = {name: i for i, name in enumerate(BLAZEPOSE_LANDMARKS)}
    return [(index[a], index[b]) for a, b in _BLAZEPOSE_EDGE_NAMES]


def skeleton_graph(name: str) -> tuple[list[tuple[int, int]], int]:
    """A keypoint skeleton's edges and keypoint count: "blazepose" (33) or "hand21" (MediaPipe's hand)."""
    if name == "blazepose":
        return blazepose_edges(), len(BLAZEPOSE_LANDMARKS)
    if name == "hand21":
        from kinemesh.models.hands.skeleton import HAND_EDGES

        return list(HAND_EDGES), 21
    raise ValueError(f"unknown keypoint skeleton {name!r}; known: blazepose, hand21")


def normalized_adjacency(num_nodes: int, edges: list[tuple[int, int]]) -> Tensor:
    """(L, L) symmetric D^-1/2 (A + I) D^-1/2 (Kipf & Welling)."""
    a = torch.eye(num_nodes)
    for i, j in edges:
        a[i, j] = a[j, i] = 1.0
    d = a.sum(dim=1).rsqrt()  # (L,)
    return d[:, None] * a * d[None, :]


# -- layers ---------------------------------------------------------------------------------------


class GraphConvLayer(nn.Module):
    """h + gelu(norm(A_hat (c * h) W)): neighbours' messages weighted by their confidence c."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, adj: Tensor, conf: Tensor) -> Tensor:
        msg = torch.matmul(adj, h * conf)  # (L, L) @ (B, L, G) -> (B, L, G)
        return h + self.drop(F.gelu(self.norm(self.lin(msg))))  # (B, L, G)


class KeypointGraphEncoder(nn.Module):
    """2D keypoints (B, L, 3) -> per-joint condition tokens (B, L, D).

    Input features are (x * c, y * c, c) so a missing keypoint (c = 0) carries no position, and its
    messages to neighbours are weighted by c = 0; it still receives its neighbours' messages and its
    own joint embedding, so its token says "joint j, unseen, near these seen joints".
    """

    def __init__(self, cfg: MaskedPoseTransformerConfig) -> None:
        super().__init__()
        edges, count = skeleton_graph(cfg.skeleton)
        if cfg.num_keypoints != count:
            raise ValueError(f"the {cfg.skeleton} keypoint graph has {count} keypoints, not {cfg.num_keypoints}")
        if cfg.keypoint_dim != 3:
            raise ValueError("keypoints are (x, y, confidence): keypoint_dim must be 3")
        self.register_buffer(
            "adjacency", normalized_adjacency(cfg.num_keypoints, edges), persistent=False
        )  # (L, L)
        self.inp = nn.Linear(cfg.keypoint_dim, cfg.graph_dim)
        self.joint_embed = nn.Parameter(torch.randn(cfg.num_keypoints, cfg.graph_dim) * 0.02)  # (L, G)
        self.layers = nn.ModuleList(
            GraphConvLayer(cfg.graph_dim, cfg.dropout) for _ in range(cfg.graph_layers)
        )
        self.out = nn.Sequential(nn.LayerNorm(cfg.graph_dim), nn.Linear(cfg.graph_dim, cfg.dim))

    def forward(self, keypoints: Tensor) -> Tensor:
        conf = keypoints[..., 2:3].clamp(0.0, 1.0)  # (B, L, 1)
        feats = torch.cat([keypoints[..., :2] * conf, conf], dim=-1)  # (B, L, 3)
        h = self.inp(feats) + self.joint_embed  # (B, L, G)
        for layer in self.layers:
            h = layer(h, self.adjacency, conf)  # (B, L, G)
        return self.out(h)  # (B, L, D)


class Attention(nn.Module):
    """Multi-head attention written with matmul/softmax (exports to plain ONNX ops at opset 17)."""

    def __init__(self, dim: int, heads: int, dropout: float, context_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        ctx = x if context is None else context
        B, Q, D = x.shape
        H = self.heads
        q = self.q(x).reshape(B, Q, H, D // H).transpose(1, 2)  # (B, H, Q, D/H)
        k, v = self.kv(ctx).reshape(B, -1, 2, H, D // H).permute(2, 0, 3, 1, 4)  # 2 x (B, H, T, D/H)
        att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(D // H))  # (B, H, Q, T)
        att = self.drop(att.softmax(dim=-1))
        out = torch.matmul(att, v).transpose(1, 2).reshape(B, Q, D)  # (B, Q, D)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention to image tokens, MLP."""

    def __init__(self, cfg: MaskedPoseTransformerConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, cfg.heads, cfg.dropout)
        self.cross = None
        if cfg.image_dim > 0:
            self.norm_cross = nn.LayerNorm(d)
            self.cross = Attention(d, cfg.heads, cfg.dropout, context_dim=d)
        self.norm2 = nn.LayerNorm(d)
        hidden = int(cfg.mlp_ratio * d)
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: Tensor, image: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x))  # (B, Q, D)
        if self.cross is not None and image is not None:
            x = x + self.cross(self.norm_cross(x), image)  # (B, Q, D)
        return x + self.mlp(self.norm2(x))  # (B, Q, D)


class MaskedPoseTransformer(nn.Module):
    """See the module docstring. `forward` == `step`."""

    def __init__(self, cfg: MaskedPoseTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.mask_id = cfg.codebook_size  # id K is [MASK]
        self.token_embed = nn.Embedding(cfg.codebook_size + 1, D)  # (K+1, D)
        self.pos_embed = nn.Parameter(torch.randn(cfg.num_tokens, D) * 0.02)  # (N, D)
        self.global_token = nn.Parameter(torch.randn(1, 1, D) * 0.02)  # (1, 1, D)
        self.keypoint_encoder = KeypointGraphEncoder(cfg)
        self.image_proj = None
        if cfg.image_dim > 0:
            self.image_proj = nn.Sequential(nn.LayerNorm(cfg.image_dim), nn.Linear(cfg.image_dim, D))
            self.image_pos = nn.Parameter(torch.randn(cfg.image_tokens, D) * 0.02)  # (T, D)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D)
        self.token_head = nn.Linear(D, cfg.codebook_size)
        self.shape_head = nn.Linear(D, cfg.shape_dim)
        self.camera_head = nn.Linear(D, cfg.camera_dim)
        self.orient_head = nn.Linear(D, cfg.orient_dim)
        self.apply(self._init)
        with torch.no_grad():  # start at the mean shape and a centred, roughly box-filling camera
            self.shape_head.weight.mul_(0.01)
            self.shape_head.bias.zero_()
            self.camera_head.weight.mul_(0.01)
            self.camera_head.bias.zero_()
            self.camera_head.bias[0] = 0.9
            self.orient_head.weight.mul_(0.01)  # start facing the camera: the identity rotation
            self.orient_head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)

    def step(self, token_ids: Tensor, keypoints: Tensor, image_tokens: Tensor | None = None) -> StepOutput:
        """token_ids (B, N) int64 in [0, K] (K = [MASK]), keypoints (B, L, 3), image_tokens (B, T, C)."""
        cfg = self.cfg
        B = token_ids.shape[0]
        pose = self.token_embed(token_ids) + self.pos_embed  # (B, N, D)
        joints = self.keypoint_encoder(keypoints)  # (B, L, D)
        x = torch.cat([self.global_token.expand(B, -1, -1), joints, pose], dim=1)  # (B, Q, D)
        x = self.drop(x)
        image = None
        if self.image_proj is not None:
            if image_tokens is None:
                raise ValueError("this model is image-conditioned (image_dim > 0): image_tokens are required")
            image = self.image_proj(image_tokens) + self.image_pos  # (B, T, D)
        elif image_tokens is not None:
            raise ValueError("this model has no image condition (image_dim = 0) but image_tokens were given")
        for block in self.blocks:
            x = block(x, image)  # (B, Q, D)
        x = self.norm(x)
        g = x[:, 0]  # (B, D)
        logits = self.token_head(x[:, 1 + cfg.num_keypoints :])  # (B, N, K)
        return StepOutput(logits, self.shape_head(g), self.camera_head(g), self.orient_head(g))

    forward = step


class MaskedPoseStepGraph(nn.Module):
    """One decoding step as an export graph: (token_ids, keypoints[, image_tokens]) -> (logits, shape, camera, orient).

    Inputs: token_ids (B, N) int64, keypoints (B, L, 3) float32, and image_tokens (B, T, C) float32
    only when the model has an image condition. Outputs: logits (B, N, K), shape (B, S), camera (B, 3),
    orient (B, 6).
    """

    input_names_keypoints = ("token_ids", "keypoints")
    output_names = ("logits", "shape", "camera", "orient")

    def __init__(self, model: MaskedPoseTransformer) -> None:
        super().__init__()
        self.model = model

    @property
    def input_names(self) -> tuple[str, ...]:
        extra = ("image_tokens",) if self.model.cfg.image_dim > 0 else ()
        return self.input_names_keypoints + extra

    def forward(self, token_ids: Tensor, keypoints: Tensor, image_tokens: Tensor | None = None) -> StepOutput:
        return self.model.step(token_ids, keypoints, image_tokens)
