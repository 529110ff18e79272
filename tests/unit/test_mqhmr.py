"""MQ-HMR: shapes of both presets, the deformable attention against a direct bilinear sampler, what
its sampling sees and ignores, and the ONNX export (dynamic batch, ORT parity)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kinemesh.models.export.onnx_export import export_graph
from kinemesh.models.mqhmr import BODY_JOINTS, MultiScaleDeformableAttention
from kinemesh.models.registry import create_model, list_models


def test_presets_build_with_the_stated_sizes() -> None:
    assert {"mqhmr_small", "mqhmr_paper"} <= set(list_models())
    with torch.device("meta"):  # 0.65 G parameters: counted without allocating them
        paper = create_model("mqhmr_paper")
    n = sum(p.numel() for p in paper.parameters())
    assert 6.3e8 < n < 6.7e8, n  # ViT-H/16 (~0.63 G) plus the pyramid and decoder
    assert paper.backbone.grid == (16, 12) and len(paper.pyramid.levels) == 4
    small = create_model("mqhmr_small", shape_dim=10).eval()
    with torch.no_grad():
        out = small(torch.randn(3, 3, 256, 192))
    assert out.body6d.shape == (3, BODY_JOINTS, 6) and out.orient6d.shape == (3, 6)
    assert out.shape.shape == (3, 10) and out.camera.shape == (3, 3)
    assert out.tokens.shape == (3, small.num_queries, small.cfg.dim)
    assert all(torch.isfinite(t).all() for t in out)


def _bilinear(fmap: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """fmap (C, H, W) at continuous pixel coordinates (x, y) (pixel centres at integers), zero outside."""
    C, H, W = fmap.shape
    x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
    out = torch.zeros(C, dtype=fmap.dtype)
    for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
        for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            if 0 <= xi < W and 0 <= yi < H:
                out += wx * wy * fmap[:, yi, xi]
    return out


def test_deformable_attention_matches_a_direct_bilinear_sampler() -> None:
    torch.manual_seed(0)
    E, n, L, P = 8, 2, 2, 3
    attn = MultiScaleDeformableAttention(E, n, L, P).eval()
    with torch.no_grad():  # learned-looking offsets and weights, not the initial rays
        attn.offsets.weight.normal_(0, 0.5)
        attn.weights.weight.normal_(0, 0.5)
    B, Q = 2, 3
    query = torch.randn(B, Q, E)
    reference = torch.rand(B, Q, 2)
    maps = [torch.randn(B, E, 5, 4), torch.randn(B, E, 3, 2)]
    with torch.no_grad():
        got = attn(query, reference, maps)
        offsets = attn.offsets(query).reshape(B, Q, n, L, P, 2)
        weights = attn.weights(query).reshape(B, Q, n, L * P).softmax(-1).reshape(B, Q, n, L, P)
        want = torch.zeros(B, Q, E)
        e = E // n
        for b in range(B):
            for lvl, fmap in enumerate(maps):
                H, W = fmap.shape[-2:]
                value = attn.value(fmap[b].flatten(1).T).T.reshape(E, H, W)
                for q in range(Q):
                    for h in range(n):
                        for p in range(P):
                            x = (reference[b, q, 0] + offsets[b, q, h, lvl, p, 0] / W) * W - 0.5
                            y = (reference[b, q, 1] + offsets[b, q, h, lvl, p, 1] / H) * H - 0.5
                            sample = _bilinear(value[h * e:(h + 1) * e], float(x), float(y))
                            want[b, q, h * e:(h + 1) * e] += weights[b, q, h, lvl, p] * sample
        want = attn.out(want)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_deformable_attention_sees_only_around_its_points() -> None:
    """A change far from every sampling point changes nothing; one under a point changes the output."""
    torch.manual_seed(1)
    attn = MultiScaleDeformableAttention(8, 2, 1, 1).eval()
    with torch.no_grad():
        attn.offsets.bias.zero_()  # every point exactly on the reference
    query, reference = torch.randn(1, 1, 8), torch.tensor([[[0.125, 0.125]]])  # the centre of cell (0, 0) of 4 x 4
    fmap = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        base = attn(query, reference, [fmap])
        far = fmap.clone()
        far[..., 2:, 2:] += 5.0
        near = fmap.clone()
        near[..., 0, 0] += 5.0
        assert torch.allclose(attn(query, reference, [far]), base, atol=1e-6)
        assert not torch.allclose(attn(query, reference, [near]), base, atol=1e-3)


def test_small_preset_exports_with_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("mqhmr_small").eval()
    with torch.no_grad():  # spread the untrained heads and sampling so parity compares real values
        for lin in (model.shape_head, model.camera_head, model.layers[0].cross.offsets, model.layers[0].cross.weights):
            lin.weight.normal_(0, 0.05)
    report = export_graph(model, {"image": torch.randn(2, 3, 256, 192)},
                          ["body6d", "orient6d", "shape", "camera", "tokens"], tmp_path / "mqhmr.onnx", opset=20)
    assert report.exporter == "dynamo" and report.opset == 20
    assert max(report.max_abs_diff.values()) <= 1e-4, report.max_abs_diff


@pytest.mark.parametrize("bad", [(250, 192), (256, 190)])
def test_crop_size_must_be_a_multiple_of_the_patch(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="multiple of the patch"):
        create_model("mqhmr_small", image_height=bad[0], image_width=bad[1])
