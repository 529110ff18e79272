"""Which graphs each body model needs, and whether a bundle can serve a job's choice: read from the
bundle's manifest alone (JSON; no torch), so the gateway can refuse a job before it is queued and the
worker again before it starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kinemesh.services.common.errors import ModelUnavailable, ModelUntrained

# JobOptions.body_model -> the bundle graphs it runs (the first names the architecture)
BODY_MODEL_GRAPHS: dict[str, tuple[str, ...]] = {
    "genhmr": ("genhmr_step", "tokenizer_decode"),
    "mq-hmr": ("mqhmr",),
}
IMAGE_BACKBONE = "vit_backbone"  # what an image-conditioned GenHMR step takes its image tokens from


def image_conditioned(manifest: dict[str, Any], step: str = "genhmr_step") -> bool:
    """Whether the bundle's decoding step graph `step` (GenHMR's, or the hand model's "hand_step")
    cross-attends to image tokens (then it needs its backbone graph and crops)."""
    graph = manifest.get("graphs", {}).get(step, {})
    return any(t["name"] == "image_tokens" for t in graph.get("inputs", []))


def graphs_for(manifest: dict[str, Any], body_model: str) -> tuple[str, ...]:
    """The bundle graphs `body_model` runs on this bundle."""
    extra = (IMAGE_BACKBONE,) if body_model == "genhmr" and image_conditioned(manifest) else ()
    return BODY_MODEL_GRAPHS[body_model] + extra


def check_body_model(manifest: dict[str, Any], body_model: str, where: str) -> None:
    """Raise ModelUnavailable when the bundle (`where`, for the message) lacks a graph `body_model`
    needs, ModelUntrained when one has random weights (its `needs` names the checkpoint)."""
    graphs = manifest.get("graphs", {})
    for graph in graphs_for(manifest, body_model):
        entry = graphs.get(graph)
        if entry is None:
            raise ModelUnavailable(f"body_model={body_model}: bundle {where} has no graph {graph!r}")
        weights = entry.get("weights") or {"status": "trained" if entry.get("trained") else "untrained"}
        if weights["status"] == "untrained":
            needs = weights.get("needs", "a trained checkpoint")
            raise ModelUntrained(
                f"body_model={body_model}: graph {graph!r} ({entry.get('architecture')}) in bundle {where} has "
                f"untrained weights (random initialisation, for tests and benchmarks only); it needs {needs}",
                graph=graph, architecture=entry.get("architecture"), checkpoint=needs)


def check_bundle_dir(bundle_dir: Path, body_model: str) -> None:
    """`check_body_model` on the bundle at `bundle_dir` when its manifest is readable here; nothing
    when it is not (a gateway without the model volume leaves the check to the worker)."""
    try:
        manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return
    check_body_model(manifest, body_model, str(bundle_dir))
