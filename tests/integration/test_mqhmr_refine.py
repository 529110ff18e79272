"""MQ-HMR's 2D-informed query-token refinement on a synthetic case, with the real body model."""

from __future__ import annotations

from pathlib import Path

import torch

from kinemesh.models.body.assets import load_body_model
from kinemesh.models.genhmr.refine import RefineConfig
from kinemesh.models.mqhmr import BODY_JOINTS, refine_queries
from kinemesh.models.mqhmr.refine import MQHMR_REFINE, synthetic_case


def test_query_refinement_lowers_the_reprojection_error(body_file: Path) -> None:
    layer = load_body_model(body_file, num_shape=16)
    model, start, data = synthetic_case(layer, frames=24)
    # the start really is what the model's own head gives for its tokens
    with torch.no_grad():
        assert torch.allclose(model.pose_head(start.tokens[:, :BODY_JOINTS]), start.body6d, atol=1e-4)
    head = [p.detach().clone() for p in model.pose_head.parameters()]
    res = refine_queries(layer, model.pose_head, start, data.keypoints, data.world, MQHMR_REFINE)
    drop = 1 - float(res.reproj_after.mean()) / float(res.reproj_before.mean())
    assert drop >= 0.2, drop  # issue 5's target on the synthetic case
    assert res.objective[-1] < res.objective[0]
    assert res.embeddings.shape == (24, BODY_JOINTS, model.cfg.dim)
    with torch.no_grad():  # the refined pose is the frozen head's output for the refined tokens
        assert torch.allclose(model.pose_head(res.embeddings), res.params.body6d, atol=1e-5)
    assert torch.equal(res.params.shape, res.params.shape[:1].expand_as(res.params.shape))  # one body per track
    assert all(torch.equal(a, b) for a, b in zip(head, model.pose_head.parameters(), strict=True))  # frozen
    still = refine_queries(layer, model.pose_head, start, data.keypoints, data.world, RefineConfig(steps=0))
    assert torch.allclose(still.params.body6d, start.body6d)
