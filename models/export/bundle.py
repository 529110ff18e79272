"""Model bundles: build the default bundle from committed weights, and open a bundle to serve it.

    python -m kinemesh.models.export.bundle build --weights models/weights/default \
        --body var/models/body/anny_core.npz --out var/models/bundle/default

Layout of a bundle directory:
    manifest.json                   name, version, graphs (architecture, config, inputs/outputs,
                                    parity, trained or not and the training record), preprocessing,
                                    joint and landmark orders, body-model id, sha256 of every file
    <graph>/1/model.onnx            one Triton model repository entry per graph ...
    <graph>/config.pbtxt            ... with its config (onnxruntime backend, dynamic batching)
    torch/pose_tokenizer.pt         the tokenizer weights for the PyTorch refinement
    neurik_record.json              NeurIK's training record (when the bundle has NeurIK)
    body/<body model file>          the compact body model the bundle was trained with

Graphs of the default bundle: genhmr_step (one decoding step), tokenizer_decode (token ids ->
pose), tokenizer_decode_embeddings (continuous embeddings -> pose), tokenizer_encode (pose ->
token ids) and neurik (windows of virtual markers -> joint coordinates, pelvis residual, body
scales; from models/weights/neurik). Each is exported with a dynamic batch axis, checked by
onnx.checker and held to ONNX Runtime/PyTorch parity (max abs difference <= 1e-4, recorded per
output in the manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kinemesh.models.biomech.neurik import load_neurik
from kinemesh.models.body.assets import read_body_model
from kinemesh.models.camera import BOX_MARGIN, MIN_CONFIDENCE
from kinemesh.models.export.onnx_export import export_graph
from kinemesh.models.export.triton import tensor_specs_from_onnx, write_triton_config
from kinemesh.models.genhmr import MaskedPoseStepGraph
from kinemesh.models.landmarks import BLAZEPOSE_LANDMARKS
from kinemesh.models.registry import create_model
from kinemesh.models.tokenizer import (
    TokenizerEmbeddingDecoderGraph,
    TokenizerEncoderGraph,
    TokenizerIndexDecoderGraph,
)
from kinemesh.models.training.motion import SMPL_JOINTS

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "kinemesh-bundle"
BUNDLE_FORMAT_VERSION = 1
MAX_BATCH = 256  # Triton max_batch_size of every graph (frames of a track per call)
# Opset 20 has a native Gelu: ONNX Runtime runs it as one kernel where opset 17's erf expansion is five
# (the decoding step ~5 % faster on a 2-core CPU, same outputs within 1e-5). Triton's onnxruntime
# backend has read opset 20 since ONNX Runtime 1.16.
BUNDLE_OPSET = 20


class BundleError(RuntimeError):
    """A bundle is missing, malformed, or a file does not match its recorded sha256."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(preset: str, overrides: dict[str, Any], state_dict: Path) -> torch.nn.Module:
    """A registered model with a saved state dict loaded, in eval mode."""
    model = create_model(preset, **overrides)
    model.load_state_dict(torch.load(state_dict, weights_only=True))
    return model.eval()


def load_trained(weights: Path) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    """The tokenizer and transformer from a weights folder (state dicts + record.json)."""
    record = json.loads((weights / "record.json").read_text())
    tok = load_weights(record["tokenizer"]["preset"], record["tokenizer"]["overrides"], weights / "pose_tokenizer.pt")
    model = load_weights(record["transformer"]["preset"], record["transformer"]["overrides"],
                         weights / "genhmr_keypoints.pt")
    return tok, model, record


def build_bundle(weights: Path, body: Path, out: Path, name: str = "default", version: str = "1",
                 neurik: Path | None = None) -> dict[str, Any]:
    """Export every graph (NeurIK's too when `neurik`, a folder with neurik.pt and record.json, is
    given), write the Triton configs and the manifest. Returns the manifest."""
    tok, model, record = load_trained(weights)
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    N, K, D = tok.cfg.num_tokens, tok.cfg.codebook_size, tok.cfg.code_dim
    J = tok.cfg.joints
    torch.manual_seed(0)
    graphs = {
        "genhmr_step": (MaskedPoseStepGraph(model), {
            "token_ids": torch.randint(0, K + 1, (2, N)), "keypoints": torch.rand(2, 33, 3)},
            list(MaskedPoseStepGraph.output_names), {"token_ids": (0, K + 1)}),
        "tokenizer_decode": (TokenizerIndexDecoderGraph(tok), {"indices": torch.randint(0, K, (2, N))},
                             ["rot6d"], {"indices": (0, K)}),
        "tokenizer_decode_embeddings": (TokenizerEmbeddingDecoderGraph(tok), {"embeddings": torch.randn(2, N, D)},
                                        ["rot6d"], None),
        "tokenizer_encode": (TokenizerEncoderGraph(tok), {"rot6d": torch.randn(2, J, 6)}, ["indices", "z_e"], None),
    }
    meta: dict[str, dict[str, Any]] = {g: {"architecture": record[p]["preset"], "config": record[p]["config"],
                                           "training_record": "training_record.json"}
                                       for g, p in (("genhmr_step", "transformer"), ("tokenizer_decode", "tokenizer"),
                                                    ("tokenizer_decode_embeddings", "tokenizer"),
                                                    ("tokenizer_encode", "tokenizer"))}
    if neurik is not None:
        net, info = load_neurik(neurik / "neurik.pt")
        c = net.cfg
        graphs["neurik"] = (net, {"markers": torch.randn(2, c.window, c.markers, 4)},
                            ["coordinates", "pelvis_residual", "scales"], None)
        meta["neurik"] = {"architecture": "neurik", "config": c.__dict__, "training_record": "neurik_record.json",
                          **info}
    entries: dict[str, Any] = {}
    for graph, (module, example, outputs, ranges) in graphs.items():
        report = export_graph(module, example, outputs, tmp / graph / "1" / "model.onnx", opset=BUNDLE_OPSET,
                              int_ranges=ranges)
        ins, outs = tensor_specs_from_onnx(report.path)
        write_triton_config(tmp / graph, graph, ins, outs, MAX_BATCH)
        entries[graph] = {
            "file": f"{graph}/1/model.onnx",
            "triton_config": f"{graph}/config.pbtxt",
            **meta[graph],
            "inputs": [{"name": s.name, "dtype": s.data_type, "dims": list(s.dims)} for s in ins],
            "outputs": [{"name": s.name, "dtype": s.data_type, "dims": list(s.dims)} for s in outs],
            "opset": report.opset, "exporter": report.exporter,
            "parity_max_abs": report.max_abs_diff, "parity_atol": report.atol,
            "trained": True,
        }
    (tmp / "torch").mkdir()
    shutil.copy2(weights / "pose_tokenizer.pt", tmp / "torch" / "pose_tokenizer.pt")
    (tmp / "body").mkdir()
    shutil.copy2(body, tmp / "body" / body.name)
    shutil.copy2(weights / "record.json", tmp / "training_record.json")
    if neurik is not None:
        shutil.copy2(neurik / "record.json", tmp / "neurik_record.json")
    _, body_header = read_body_model(body)
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
        "name": name, "version": version, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "graphs": entries,
        "torch": {"pose_tokenizer": {"file": "torch/pose_tokenizer.pt", "preset": record["tokenizer"]["preset"],
                                     "overrides": record["tokenizer"]["overrides"]}},
        "body_model": {"id": body_header["name"], "file": f"body/{body.name}",
                       "shape_components": record["body_model_shape_components"]},
        "preprocessing": {"keypoints": "BlazePose 33 landmarks, (x, y) normalised to a square person box "
                                       "(centre of the confident landmarks' extent, half-side = margin * extent / 2), "
                                       "plus confidence", "box_margin": BOX_MARGIN,
                          "box_min_confidence": MIN_CONFIDENCE,
                          "camera": "weak perspective (s, tx, ty): u = s (X + tx), v = s (-Y + ty)"},
        "decoding": {"iterations": 5, "schedule": "cosine"},
        "joint_names": list(SMPL_JOINTS), "body_pose_joints": list(SMPL_JOINTS[1:22]),
        "landmark_names": list(BLAZEPOSE_LANDMARKS),
    }
    manifest["files"] = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def graph_path(self, graph: str) -> Path:
        try:
            return self.root / self.manifest["graphs"][graph]["file"]
        except KeyError:
            raise BundleError(f"bundle {self.root} has no graph {graph!r}") from None

    def load_tokenizer(self) -> torch.nn.Module:
        """The PyTorch tokenizer the refinement needs (its decoder and codebook)."""
        entry = self.manifest["torch"]["pose_tokenizer"]
        return load_weights(entry["preset"], entry["overrides"], self.path(entry["file"]))

    def summary(self) -> dict[str, Any]:
        return {"name": self.manifest["name"], "version": self.manifest["version"],
                "body_model": self.manifest["body_model"]["id"],
                "graphs": {g: {"architecture": e["architecture"], "trained": e["trained"]}
                           for g, e in self.manifest["graphs"].items()}}


def open_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle's manifest; with verify, check every file's sha256 (typed error on mismatch)."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"no bundle at {root} (missing {MANIFEST}); build it with `make bundle`") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{root / MANIFEST} is not JSON: {e}") from None
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{root}: not a {BUNDLE_FORMAT} v{BUNDLE_FORMAT_VERSION} bundle")
    if verify:
        for rel, digest in manifest.get("files", {}).items():
            path = root / rel
            if not path.is_file():
                raise BundleError(f"{root}: {rel} is missing")
            if sha256_file(path) != digest:
                raise BundleError(f"{root}: {rel} does not match its sha256 in the manifest")
    return Bundle(root, manifest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build or show a model bundle.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--weights", default="models/weights/default")
    b.add_argument("--body", default="var/models/body/anny_core.npz")
    b.add_argument("--out", default="var/models/bundle/default")
    b.add_argument("--neurik", default=None, help="NeurIK weights folder (neurik.pt, record.json) to add")
    s = sub.add_parser("show")
    s.add_argument("bundle", nargs="?", default="var/models/bundle/default")
    a = p.parse_args(argv)
    if a.cmd == "build":
        manifest = build_bundle(Path(a.weights), Path(a.body), Path(a.out),
                                neurik=Path(a.neurik) if a.neurik else None)
        worst = max(v for g in manifest["graphs"].values() for v in g["parity_max_abs"].values())
        print(f"bundle built: {a.out} ({len(manifest['graphs'])} graphs, parity max abs {worst:.2e})")
    else:
        print(json.dumps(open_bundle(a.bundle).summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
