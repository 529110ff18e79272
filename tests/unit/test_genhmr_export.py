"""One GenHMR decoding step exports as one ONNX graph (dynamic batch, ORT parity), and the Python
decoding loop gives the same tokens through ONNX Runtime as through eager PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kinemesh.models.backends import OrtBackend
from kinemesh.models.export.onnx_export import export_graph
from kinemesh.models.genhmr import BackendStepFn, MaskedPoseStepGraph, TorchStepFn, masked_decode
from kinemesh.models.registry import create_model


def _keypoints(b: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(b, 33, 3, generator=g)
    kp[:, ::7, 2] = 0.0  # some missing keypoints
    return kp  # (B, 33, 3)


# The shipped preset goes through the default exporter (torch.export / dynamo, ~10 s here); the
# image path is a tiny model through the TorchScript exporter so the file stays under 30 s on 2 cores.
@pytest.mark.parametrize(
    ("overrides", "exporter"),
    [
        ({}, "dynamo"),  # the "genhmr_keypoints_small" preset as shipped: keypoints only
        (dict(dim=64, depth=1, graph_dim=16, image_dim=48, image_tokens=12), "torchscript"),
    ],
    ids=["keypoints", "keypoints+image"],
)
def test_step_graph_export_and_decode_parity(overrides: dict, exporter: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("genhmr_keypoints_small", **overrides).eval()
    cfg = model.cfg
    with torch.no_grad():  # spread the logits: an untrained head is nearly flat, and near-ties could
        model.token_head.weight.mul_(10.0)  # flip an argmax between backends on float noise
    graph = MaskedPoseStepGraph(model)
    B = 2
    example = {"token_ids": torch.full((B, cfg.num_tokens), cfg.codebook_size), "keypoints": _keypoints(B, 0)}
    if cfg.image_dim:
        example["image_tokens"] = torch.randn(B, cfg.image_tokens, cfg.image_dim)
    assert tuple(example) == graph.input_names
    report = export_graph(
        graph,
        example,
        list(graph.output_names),
        tmp_path / "genhmr_step" / "1" / "model.onnx",
        int_ranges={"token_ids": (0, cfg.codebook_size + 1)},
        exporter=exporter,
    )
    assert report.exporter == exporter
    assert report.batch_sizes == (1, 5) and report.checker_ok
    assert max(report.max_abs_diff.values()) <= 1e-4, report.max_abs_diff
    print(f"parity {exporter}: {report.max_abs_diff}")

    backend = OrtBackend(device="cpu", intra_op_threads=1)
    backend.load("genhmr_step", report.path)
    ort_step = BackendStepFn(backend, "genhmr_step", cfg.num_tokens, cfg.codebook_size)
    kp = _keypoints(5, 1)
    image = torch.randn(5, cfg.image_tokens, cfg.image_dim) if cfg.image_dim else None
    eager = masked_decode(TorchStepFn(model), kp, image)
    onnx = masked_decode(ort_step, kp.numpy(), None if image is None else image.numpy())
    assert torch.equal(onnx.token_ids, eager.token_ids)
    for a, b in zip(onnx.history, eager.history, strict=True):
        assert torch.equal(a.token_ids, b.token_ids)
    assert torch.allclose(onnx.confidences, eager.confidences, atol=1e-4)
    assert torch.allclose(onnx.shape, eager.shape, atol=1e-4)
    assert torch.allclose(onnx.camera, eager.camera, atol=1e-4)
    assert torch.allclose(onnx.orient, eager.orient, atol=1e-4)
    # a batch split into graph calls of 2 (the CPU worker's sub-batching) decodes the same
    split = masked_decode(BackendStepFn(backend, "genhmr_step", cfg.num_tokens, cfg.codebook_size, max_batch=2),
                          kp, image)
    assert torch.equal(split.token_ids, onnx.token_ids)
    assert torch.allclose(split.confidences, onnx.confidences, atol=1e-6)
    assert torch.allclose(split.shape, onnx.shape, atol=1e-6)
