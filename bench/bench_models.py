"""Model figures (issue 5): `make bench-models` or as part of `make bench`.

  parity       every graph exported to ONNX and run by ONNX Runtime (CPU) against PyTorch on the same
               random inputs: the default bundle's graphs (as its manifest recorded them at build), MQ-HMR's
               CPU preset, and the paper-size graphs (MQ-HMR with its ViT-H/16 backbone, GenHMR's decoding
               step with ViT-H image tokens), those exported and checked at batch 1 (random weights: no paper
               checkpoint is public; parity does not depend on them).
  GFLOPs       per frame of each paper-size graph (PyTorch's flop counter: matrix products and
               convolutions), and the frames/s that 800 TFLOP/s would allow.
  Triton       the default bundle served by a real tritonserver (nvidia-pytriton's, tests/triton) and called
               through the project's Triton backend (gRPC): the largest difference from in-process ONNX
               Runtime over every graph, and the time a call adds (median over 50 interleaved calls of
               each, the body stage's genhmr_step call of 32 frames; the server runs each graph in ONNX
               Runtime behind Triton's Python backend, on the same 2 cores).
  hands        the default bundle's hand model through its ONNX graphs on 5000 held-out synthetic hands.
  fp16         the default bundle converted to float16 (`kinemesh bundle fp16`): the recorded per-graph
               error, and its effect on decoded tokens, joints and the hand model's error.
  tuning       `kinemesh bundle tune` on this CPU: the batch chosen per graph and its items/s.
  refinement   MQ-HMR's query-token refinement on the synthetic case (`mqhmr.synthetic_start`: the true
               pose of 64 synthetic frames, every joint turned 15 degrees RMS, the shape off, its best
               camera), the relative drop of the mean reprojection error.
The GPU figures (bench/gpu.sh on a machine with a GPU, bench/gpu_results.json) are shown in RESULTS.md
beside these.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kinemesh.models.export.onnx_export import export_graph  # noqa: E402
from kinemesh.models.mqhmr.model import MQHMR_OUTPUTS  # noqa: E402
from kinemesh.models.registry import create_model, model_config  # noqa: E402

VAR = REPO / "var"
TFLOPS = 800.0  # the accelerator rate the issue asks frames/s against
GENHMR_ITERATIONS = 5  # decoding steps per frame
MQ_OUTPUTS = list(MQHMR_OUTPUTS)
TUNED_GRAPHS = ("genhmr_step", "mqhmr", "neurik", "hand_step")  # the graphs a job's stages call in batches

DESCRIPTIONS = {
    "parity_max_abs": "largest |ONNX Runtime - PyTorch| over every graph's outputs: the default bundle's graphs, "
                      "MQ-HMR's CPU preset, and the paper-size MQ-HMR and GenHMR step at batch 1 on CPU (target <= 1e-4)",
    **{f"parity_max_abs_{g}": f"the same for {g} alone" for g in ("bundle", "mqhmr_small", "mqhmr_paper", "genhmr_paper_step")},
    "gflops_mqhmr_paper": "GFLOPs per frame of the paper-size MQ-HMR (ViT-H/16 at 256x192, 4-level pyramid, 6-layer "
                          "deformable decoder; PyTorch's flop counter)",
    "gflops_vit_h16": "GFLOPs per frame of the ViT-H/16 backbone alone (what image-conditioned GenHMR runs once a frame)",
    "gflops_genhmr_paper_step": "GFLOPs of one paper-size GenHMR decoding step with 192 ViT-H image tokens",
    "gflops_genhmr_paper_frame": f"GFLOPs per frame of image-conditioned GenHMR: the backbone and {GENHMR_ITERATIONS} steps",
    **{f"fps_at_800_tflops_{g}": f"frames/s that {TFLOPS:g} TFLOP/s would allow for {g.replace('_', ' ')}"
       for g in ("mqhmr_paper", "genhmr_paper_frame")},
    "triton_vs_ort_max_abs": "largest |Triton backend - in-process ONNX Runtime| over every graph of the default "
                             "bundle's outputs (batch 1 and 3, random inputs)",
    "triton_overhead_ms_p50": "median time of a genhmr_step call of 32 frames through Triton (gRPC, loopback) minus "
                              "in-process ONNX Runtime's, interleaved, 50 each",
    "triton_ms_p50": "the median Triton call itself",
    "ort_ms_p50": "the median in-process ONNX Runtime call itself",
    "hand_pa_mpjpe_mm_synth": "the default bundle's hand model (MMHMR's method, keypoint-conditioned, 5 decoding "
                              "iterations through its ONNX graphs) on the held-out synthetic hands (seed 1, 5000): "
                              "PA-MPJPE of the 21 keypoints, mm (target <= 15)",
    "mqhmr_refine_reproj_drop": "MQ-HMR query-token refinement (20 steps) on the synthetic case: 1 - mean "
                                "reprojection error after / before (target >= 0.2)",
    "mqhmr_refine_reproj_before": "the mean reprojection error before, crop-box units",
    "mqhmr_refine_reproj_after": "the same after",
    "fp16_max_rel_worst": "the fp16 bundle (`kinemesh bundle fp16`): the largest |fp16 - fp32| over the float32 "
                          "output's largest magnitude, over every graph and output (random inputs as the parity check)",
    "fp16_genhmr_token_agreement": "share of pose tokens the fp16 bundle decodes as the float32 one does "
                                   "(1024 synthetic frames, 5 iterations)",
    "fp16_genhmr_joint_diff_mm": "mean distance between the fp16 and float32 bundles' decoded joints, mm (the same frames)",
    "fp16_hand_pa_mpjpe_mm_synth": "hand_pa_mpjpe_mm_synth with the fp16 bundle's hand graphs",
    "fp16_max_rel_mqhmr_paper": "the paper-size MQ-HMR (ViT-H/16, 2.6 GB in fp32, random weights) converted by "
                                "`fp16.convert_graph`: its largest error over an output's largest magnitude (batch 1 "
                                "and 5, CPU provider)",
    "fp16_gib_mqhmr_paper": "its fp16 file's size, GiB (weights in ONNX external data)",
    **{f"cpu_tuned_batch_{g}": f"`kinemesh bundle tune` on this CPU: the batch chosen for {g} (smallest within 5% "
                               "of the best items/s)" for g in TUNED_GRAPHS},
    **{f"cpu_items_per_s_{g}": f"items/s of {g} at that batch (IO-bound ONNX Runtime calls, CPU)" for g in TUNED_GRAPHS},
    "cpu_genhmr_step_items_per_s_by_batch": "items/s of the GenHMR step at each batch size tried, CPU",
    "ort_bound_ms_p50_cpu": "the GenHMR step on 32 frames through ONNX Runtime IO binding of torch tensors (run_bound), "
                            "median ms of 50, interleaved with the host path, CPU",
    "ort_host_ms_p50_cpu": "the same call through host numpy (to numpy, run, back to torch)",
    "ort_bound_vs_host_cpu": "their ratio, bound over host (< 1: binding is faster; on a GPU it also saves the "
                             "host round trip, measured by bench/gpu.sh)",
}


def gflops(module: torch.nn.Module, *args: torch.Tensor) -> float:
    module = module.eval().requires_grad_(False)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args)
    return counter.get_total_flops() / 1e9


class _Step(torch.nn.Module):
    """A GenHMR model's decoding step as a module call."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids: torch.Tensor, keypoints: torch.Tensor, image_tokens: torch.Tensor):
        return self.model.step(token_ids, keypoints, image_tokens)


def _step_inputs(cfg, batch: int) -> dict[str, torch.Tensor]:
    return {"token_ids": torch.randint(0, cfg.codebook_size + 1, (batch, cfg.num_tokens)),
            "keypoints": torch.rand(batch, 33, 3), "image_tokens": torch.randn(batch, cfg.image_tokens, cfg.image_dim)}


def flop_figures() -> dict[str, float]:
    from kinemesh.models.backbone import VisionTransformer

    c = model_config("mqhmr_paper")
    image = torch.randn(1, 3, c.image_height, c.image_width, device="meta")
    with torch.device("meta"):
        mq = gflops(create_model("mqhmr_paper"), image)
        vit = gflops(VisionTransformer((c.image_height, c.image_width), c.patch, c.vit_dim, c.vit_depth, c.vit_heads),
                     image)
        g = model_config("genhmr_paper")
        step = gflops(_Step(create_model("genhmr_paper")), *(t.to("meta") for t in _step_inputs(g, 1).values()))
    frame = vit + GENHMR_ITERATIONS * step
    return {"gflops_mqhmr_paper": round(mq, 1), "gflops_vit_h16": round(vit, 1),
            "gflops_genhmr_paper_step": round(step, 1), "gflops_genhmr_paper_frame": round(frame, 1),
            "fps_at_800_tflops_mqhmr_paper": round(TFLOPS * 1e3 / mq), "fps_at_800_tflops_genhmr_paper_frame":
            round(TFLOPS * 1e3 / frame)}


def _spread_heads(model: torch.nn.Module) -> torch.nn.Module:
    """Untrained MQ-HMR starts its shape and camera heads at zero (constant outputs): give them random
    weights so that parity compares outputs that vary with the input."""
    with torch.no_grad():
        model.shape_head.weight.normal_(0, 0.05)
        model.camera_head.weight.normal_(0, 0.05)
    return model


def parity_figures(bundle: Path, paper: bool = True) -> dict[str, float]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    out = {"parity_max_abs_bundle": max(v for g in manifest["graphs"].values() for v in g["parity_max_abs"].values())}
    extra: dict[str, float] = {}  # not parity: the paper-size MQ-HMR converted to fp16
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="kinemesh-bench-export-") as tmp:
        r = export_graph(_spread_heads(create_model("mqhmr_small")), {"image": torch.randn(2, 3, 256, 192)},
                         MQ_OUTPUTS, Path(tmp) / "s.onnx", opset=20)
        out["parity_max_abs_mqhmr_small"] = max(r.max_abs_diff.values())
        if paper:
            print("  exporting the paper-size MQ-HMR (2.6 GB of weights; minutes) ...", flush=True)
            r = export_graph(_spread_heads(create_model("mqhmr_paper")), {"image": torch.randn(1, 3, 256, 192)},
                             MQ_OUTPUTS, Path(tmp) / "mq" / "model.onnx", opset=20, parity_batch_sizes=(1,))
            out["parity_max_abs_mqhmr_paper"] = max(r.max_abs_diff.values())
            print("  the paper-size MQ-HMR in fp16 ...", flush=True)
            from kinemesh.models.export.fp16 import convert_graph, measure

            half = Path(tmp) / "mq16" / "model.onnx"
            convert_graph(r.path, half)  # over 2 GB: shapes inferred from the file, fp16 weights in external data
            extra["fp16_max_rel_mqhmr_paper"] = max(e.get("max_rel", 0.0) for e in measure(r.path, half, 2).values())
            extra["fp16_gib_mqhmr_paper"] = sum(f.stat().st_size for f in half.parent.iterdir()) / 2**30
            print("  exporting the paper-size GenHMR step ...", flush=True)
            g = create_model("genhmr_paper")
            from kinemesh.models.genhmr import MaskedPoseStepGraph

            r = export_graph(MaskedPoseStepGraph(g), _step_inputs(g.cfg, 1), list(MaskedPoseStepGraph.output_names),
                             Path(tmp) / "g" / "model.onnx", opset=20, parity_batch_sizes=(1,),
                             int_ranges={"token_ids": (0, g.cfg.codebook_size + 1)})
            out["parity_max_abs_genhmr_paper_step"] = max(r.max_abs_diff.values())
    out["parity_max_abs"] = max(out.values())
    return {k: float(f"{v:.2e}") for k, v in out.items()} | {k: float(f"{v:.3g}") for k, v in extra.items()}


def refine_figures(body_file: Path) -> dict[str, float]:
    from kinemesh.models.body.assets import load_body_model
    from kinemesh.models.mqhmr import refine_queries
    from kinemesh.models.mqhmr.refine import synthetic_case

    layer = load_body_model(body_file, num_shape=32)
    model, start, data = synthetic_case(layer, frames=64)
    res = refine_queries(layer, model.pose_head, start, data.keypoints, data.world)
    before, after = float(res.reproj_before.mean()), float(res.reproj_after.mean())
    return {"mqhmr_refine_reproj_drop": round(1 - after / before, 3), "mqhmr_refine_reproj_before": round(before, 4),
            "mqhmr_refine_reproj_after": round(after, 4)}


def triton_figures(bundle: Path) -> dict[str, float]:
    import time

    import numpy as np

    from kinemesh.models.backends import OrtBackend, TritonBackend
    from kinemesh.models.export.bundle import open_bundle
    from tests.triton.server import TritonServer

    server = TritonServer.start(bundle, VAR / "cache" / "triton-venv")
    try:
        remote, local = TritonBackend(server.url), OrtBackend(device="cpu")
        rng = np.random.default_rng(0)
        worst = 0.0
        graphs = open_bundle(bundle).manifest["graphs"]
        for graph in graphs:
            path = bundle / graphs[graph]["file"]
            remote.load(graph, path)
            local.load(graph, path)
            for batch in (1, 3):
                feeds = {s.name: (rng.integers(0, 10, (batch, *s.shape[1:])) if np.issubdtype(s.dtype, np.integer)
                                  else rng.standard_normal((batch, *s.shape[1:]))).astype(s.dtype)
                         for s in local.inputs(graph)}
                got, want = remote.run(graph, feeds), local.run(graph, feeds)
                worst = max(worst, max(float(np.abs(got[k].astype(np.float64) - want[k]).max()) for k in want))
        feeds = {"token_ids": rng.integers(0, 10, (32, graphs["genhmr_step"]["inputs"][0]["dims"][0])),
                 "keypoints": rng.random((32, 33, 3), dtype=np.float32)}
        times: dict[str, list[float]] = {"triton": [], "ort": []}
        for i in range(55):
            for name, backend in (("triton", remote), ("ort", local)):
                t0 = time.perf_counter()
                backend.run("genhmr_step", feeds)
                if i >= 5:  # warm-up
                    times[name].append(time.perf_counter() - t0)
        med = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    finally:
        server.stop()
    return {"triton_vs_ort_max_abs": float(f"{worst:.2e}"), "triton_ms_p50": round(med["triton"], 2),
            "ort_ms_p50": round(med["ort"], 2), "triton_overhead_ms_p50": round(med["triton"] - med["ort"], 2)}


def hand_figures(bundle_dir: Path) -> dict[str, float]:
    from kinemesh.models.backends import OrtBackend
    from kinemesh.models.export.bundle import open_bundle
    from kinemesh.models.genhmr.decoding import BackendStepFn
    from kinemesh.models.genhmr.inference import BackendDecoder, predict_bodies
    from kinemesh.models.hands.skeleton import HandSkeleton
    from kinemesh.models.hands.synth import generate
    from kinemesh.models.rotations import rot6d_to_matrix
    from kinemesh.models.training.metrics import pa_mpjpe_mm

    bundle = open_bundle(bundle_dir)
    backend = OrtBackend(device="cpu")
    for graph in ("hand_step", "hand_tokenizer_decode"):
        backend.load(graph, bundle.graph_path(graph))
    skeleton = HandSkeleton.from_file(bundle.path(bundle.manifest["hands"]["skeleton"]))
    data = generate(skeleton, 5000, seed=1)
    cfg = bundle.manifest["graphs"]["hand_step"]["config"]
    step = BackendStepFn(backend, "hand_step", cfg["num_tokens"], cfg["codebook_size"], max_batch=256)
    pred = predict_bodies(step, BackendDecoder(backend, "hand_tokenizer_decode"), data.keypoints, 5)
    rot = torch.cat([rot6d_to_matrix(pred.orient6d)[:, None], rot6d_to_matrix(pred.body6d)], 1)
    with torch.no_grad():
        points = skeleton(rot, pred.shape[:, 0].exp())
    return {"hand_pa_mpjpe_mm_synth": round(float(pa_mpjpe_mm(points, data.keypoints3d).mean()), 2)}


def bound_vs_host(backend, graph: str, feeds: dict[str, torch.Tensor], repeats: int = 50) -> dict[str, float]:
    """Median ms of `graph` on torch `feeds` through IO binding (`run_bound`) and through host numpy
    (what `run_tensors` does for a backend without binding: to numpy, `run`, back to the feeds'
    device), interleaved, and their ratio (bound / host; < 1: binding is faster)."""
    import statistics
    import time
    from types import SimpleNamespace

    from kinemesh.models.backends import run_tensors

    numpy_only = SimpleNamespace(run=backend.run)  # no run_bound: run_tensors goes through the host

    def host() -> None:
        run_tensors(numpy_only, graph, feeds)

    def bound() -> None:
        backend.run_bound(graph, feeds)

    sync = torch.cuda.synchronize if next(iter(feeds.values())).is_cuda else (lambda: None)
    times: dict[str, list[float]] = {"bound": [], "host": []}
    for fn in (bound, host):  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in (("bound", bound), ("host", host)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"bound_ms_p50": round(med["bound"], 3), "host_ms_p50": round(med["host"], 3),
            "bound_vs_host": round(med["bound"] / med["host"], 3)}


def binding_figures(bundle_dir: Path) -> dict[str, float]:
    """IO binding against the host numpy path on this CPU: the body stage's GenHMR step call (32 frames)."""
    from kinemesh.models.backends import OrtBackend
    from kinemesh.models.backends.base import random_inputs
    from kinemesh.models.export.bundle import open_bundle

    bundle = open_bundle(bundle_dir)
    backend = OrtBackend(device="cpu")
    backend.load("genhmr_step", bundle.graph_path("genhmr_step"))
    feeds = random_inputs(backend.inputs("genhmr_step"), 32, bundle.token_range("genhmr_step"), torch.device("cpu"),
                          torch.Generator().manual_seed(0))
    r = bound_vs_host(backend, "genhmr_step", feeds)
    return {"ort_bound_ms_p50_cpu": r["bound_ms_p50"], "ort_host_ms_p50_cpu": r["host_ms_p50"],
            "ort_bound_vs_host_cpu": r["bound_vs_host"]}


def fp16_figures(bundle_dir: Path, work: Path) -> dict[str, float]:
    """The default bundle as an fp16 bundle (`kinemesh bundle fp16`): its recorded per-graph error, and
    what it changes at the task level: GenHMR's decoded tokens and joints on synthetic bodies, the
    hand model's PA-MPJPE."""
    from kinemesh.models.export.fp16 import build_fp16_bundle
    from kinemesh.models.genhmr.inference import full_rotations, predict_bodies
    from kinemesh.models.training.synth import generate
    from kinemesh.services.worker.stages.body import BodyStage

    half_dir = work / "default-fp16"
    manifest = build_fp16_bundle(bundle_dir, half_dir)
    worst = max(max(e["precision"]["fp16_max_rel"].values()) for e in manifest["graphs"].values())
    full, half = BodyStage(bundle_dir), BodyStage(half_dir)
    data = generate(full.layer, 64, 16, seed=41, num_shape=full.layer.config.num_shape)
    a = predict_bodies(full.step_fn, full.decoder_fn, data.keypoints, full.iterations)
    b = predict_bodies(half.step_fn, half.decoder_fn, data.keypoints, half.iterations)

    def joints(p) -> torch.Tensor:
        with torch.no_grad():
            return full.layer.skeleton(full_rotations(p.body6d, p.orient6d), p.shape, torch.zeros(len(p.shape), 3))[0]

    return {"fp16_max_rel_worst": float(f"{worst:.2e}"),
            "fp16_genhmr_token_agreement": round(float((a.token_ids == b.token_ids).float().mean()), 4),
            "fp16_genhmr_joint_diff_mm": round(float((joints(a) - joints(b)).norm(dim=-1).mean()) * 1000, 3),
            "fp16_hand_pa_mpjpe_mm_synth": hand_figures(half_dir)["hand_pa_mpjpe_mm_synth"]}


def tuning_figures(bundle_dir: Path, work: Path) -> dict[str, float]:
    """`kinemesh bundle tune` on this CPU (a copy of the default bundle): each graph's tuned batch and
    its items/s there, and the curve of the GenHMR step."""
    import shutil

    from kinemesh.models.export.tuning import tune_bundle

    shutil.copytree(bundle_dir, work / "tuned")
    entry = tune_bundle(work / "tuned", "cpu", list(TUNED_GRAPHS))
    out: dict[str, float] = {}
    for graph, e in entry["graphs"].items():
        out[f"cpu_tuned_batch_{graph}"] = e["batch"]
        out[f"cpu_items_per_s_{graph}"] = e["items_per_s"][str(e["batch"])]
    out["cpu_genhmr_step_items_per_s_by_batch"] = ", ".join(
        f"{b}: {v:g}" for b, v in entry["graphs"]["genhmr_step"]["items_per_s"].items())
    return out


def model_figures(model_dir: Path, paper: bool = True) -> dict[str, float]:
    print("models: GFLOPs of the paper-size graphs ...", flush=True)
    out = flop_figures()
    print("models: MQ-HMR query refinement on the synthetic case ...", flush=True)
    out.update(refine_figures(model_dir / "body" / "anny_core.npz"))
    print("models: the hand model on held-out synthetic hands ...", flush=True)
    out.update(hand_figures(model_dir / "bundle" / "default"))
    print("models: the bundle through a real tritonserver ...", flush=True)
    out.update(triton_figures(model_dir / "bundle" / "default"))
    print("models: IO binding against the host path ...", flush=True)
    out.update(binding_figures(model_dir / "bundle" / "default"))
    with tempfile.TemporaryDirectory() as tmp:
        print("models: the fp16 bundle against float32 ...", flush=True)
        out.update(fp16_figures(model_dir / "bundle" / "default", Path(tmp)))
        print("models: batch sizes tuned on this CPU ...", flush=True)
        out.update(tuning_figures(model_dir / "bundle" / "default", Path(tmp)))
    print("models: ONNX parity of every graph ...", flush=True)
    out.update(parity_figures(model_dir / "bundle" / "default", paper))
    return out


def main() -> int:
    from bench.run import merge_results

    merge_results(model_figures(VAR / "models", paper="--no-paper" not in sys.argv), "bench-models", "bench_models.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
