"""`make bench`: measure the service and write bench/results.json (flat keys) and bench/RESULTS.md.

Every figure comes from real components started here: PyAV, the MediaPipe landmarker, a
uvicorn gateway, a Celery worker process and Redis. Load for the status benchmark comes from
wrk in a separate process.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_body import DESCRIPTIONS as BODY_DESCRIPTIONS  # noqa: E402
from bench.bench_body import NO_LIMITS, body_figures  # noqa: E402
from bench.bench_decode import decode_fps  # noqa: E402
from bench.bench_kinematics import DESCRIPTIONS as KINEMATICS_DESCRIPTIONS  # noqa: E402
from bench.bench_kinematics import kinematics_figures  # noqa: E402
from bench.bench_models import DESCRIPTIONS as MODEL_DESCRIPTIONS  # noqa: E402
from bench.bench_models import TFLOPS, model_figures  # noqa: E402
from kinemesh.models.assets.mediapipe_pose import build  # noqa: E402
from kinemesh.models.assets.pose2sim_clips import ensure_demo_clips  # noqa: E402
from kinemesh.services.client import Client  # noqa: E402
from kinemesh.services.devstack import Stack, resolve_redis  # noqa: E402

VAR = REPO / "var"
COMMAND = "make bench"


def keypoints_fps(clip: Path, model_dir: Path) -> float:
    """Landmarker + tracker throughput on frames already decoded (decode measured separately)."""
    from kinemesh.services.worker.stages.base import DecodedVideo, NullContext
    from kinemesh.services.worker.stages.decode import DecodeStage
    from kinemesh.services.worker.stages.keypoints import KeypointStage

    video = DecodeStage().open(clip, None, limits=NO_LIMITS)
    batches = list(video.batches())
    cached = DecodedVideo(meta=video.meta, batches=lambda: iter(batches))
    with KeypointStage(model_dir, max_people=1) as stage:
        stage.run(cached, NullContext())  # warm caches
        n = int(sum(len(b.indices) for b in batches))
        t0 = time.perf_counter()
        tracks = stage.run(cached, NullContext())
        dt = time.perf_counter() - t0
    assert sum(1 for f in tracks.frames if f.people) >= 0.9 * n, "the benchmark clip must show a person"
    return n / dt


def one_frame_clip(path: Path) -> Path:
    from tests import media

    return media.make_one_frame_video(path, size=(320, 240))


def padded_clip(path: Path, total_mb: int) -> Path:
    """A valid faststart mp4 followed by zero padding up to `total_mb`: streams like a big upload."""
    from tests import media

    media.make_video(path, frames=10, size=(64, 64), fps=10, faststart=True)
    with path.open("ab") as fh:
        chunk = b"\0" * (1 << 20)
        while fh.tell() < total_mb * (1 << 20):
            fh.write(chunk)
    return path


def job_overhead(stack: Stack, client: Client, clip: Path, n: int = 30) -> tuple[float, float]:
    """Submit → succeeded (client side, polling every 2 ms) minus the stages' own recorded time."""
    overheads, totals = [], []
    for i in range(n + 3):
        t0 = time.perf_counter()
        job = client.submit(clip)
        while True:
            doc = client.get(job["id"])
            if doc["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.002)
        total = time.perf_counter() - t0
        assert doc["state"] == "succeeded", doc
        if i >= 3:  # first jobs warm connection pools and caches
            stages = sum(t["seconds"] for t in doc["timings"])
            overheads.append((total - stages) * 1000)
            totals.append(total * 1000)
    return statistics.median(overheads), statistics.median(totals)


def status_rps(stack: Stack, api_key: str, job_id: str, seconds: int = 10, connections: int = 16) -> float:
    wrk = shutil.which("wrk")
    if wrk is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-H", f"Authorization: Bearer {api_key}",
                          f"{stack.url}/v1/jobs/{job_id}"], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"status benchmark got errors: {out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def upload(stack: Stack, api_key: str, clip: Path) -> tuple[float, int]:
    def body():
        with clip.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk

    t0 = time.perf_counter()
    resp = httpx.post(f"{stack.url}/v1/jobs", content=body(), timeout=300,
                      headers={"Authorization": f"Bearer {api_key}", "Content-Length": str(clip.stat().st_size)})
    return time.perf_counter() - t0, resp.status_code


def main() -> int:
    results: dict[str, float] = {}
    clips = ensure_demo_clips(VAR / "cache" / "pose2sim")
    clip = clips["single_cam01"]
    build(VAR / "models" / "mediapipe")
    tmp = Path(tempfile.mkdtemp(prefix="kinemesh-bench-"))
    print("decode ...", flush=True)
    results["decode_fps_1080p"] = round(decode_fps(clip, repeats=3), 1)
    print("keypoints ...", flush=True)
    results["keypoints_fps_1080p"] = round(keypoints_fps(clip, VAR / "models"), 1)

    redis_url, private = resolve_redis()
    stack = Stack.create(redis_url, tmp / "stack", VAR / "models", KINEMESH_MIN_FRAMES="1",
                         KINEMESH_MAX_UPLOAD_MB="400")
    try:
        stack.start_gateway()
        stack.start_worker()
        api_key = stack.create_key("bench")
        client = Client(stack.url, api_key)
        print("job overhead ...", flush=True)
        p50, total = job_overhead(stack, client, one_frame_clip(tmp / "one.mp4"))
        results["job_overhead_ms_p50"] = round(p50, 1)
        results["job_total_ms_p50_one_frame"] = round(total, 1)
        print("status rps ...", flush=True)
        job_id = client.submit(one_frame_clip(tmp / "one2.mp4"))["id"]
        results["status_get_rps"] = round(status_rps(stack, api_key, job_id), 0)
        results["status_get_rps_c64"] = round(status_rps(stack, api_key, job_id, connections=64), 0)
        print("upload ...", flush=True)
        small, big = padded_clip(tmp / "small.mp4", 2), padded_clip(tmp / "big.mp4", 200)
        _, status = upload(stack, api_key, small)
        assert status == 202, status
        rss_small = peak_rss_mb(stack.gateway.pid)
        seconds, status = upload(stack, api_key, big)
        assert status == 202, status
        rss_big = peak_rss_mb(stack.gateway.pid)
        results["upload_mb_per_s"] = round(big.stat().st_size / (1 << 20) / seconds, 1)
        results["upload_rss_delta_mb"] = round(rss_big - rss_small, 1)
    finally:
        stack.stop()
        if private:
            private.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results.update(body_figures(VAR / "models", clips))
    results.update(kinematics_figures(VAR / "models", clips))
    results.update(model_figures(VAR / "models"))

    (REPO / "bench" / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    write_markdown(results)
    print(json.dumps(results, indent=2))
    return 0


DESCRIPTIONS = {
    "decode_fps_1080p": "DecodeStage on Pose2Sim Demo_SinglePerson cam01 (1080×1920, 60 fps, H.264), every frame to upright RGB, probe included; best of 3",
    "keypoints_fps_1080p": "KeypointStage (MediaPipe pose landmarker full, VIDEO mode, + tracker) on the same clip's frames, decoded beforehand",
    "job_overhead_ms_p50": "submit → succeeded for a one-frame 320×240 clip (client polls every 2 ms), minus the stages' recorded time; median of 30 (KINEMESH_MIN_FRAMES=1 for this stack)",
    "job_total_ms_p50_one_frame": "the same, without subtracting the stages",
    "status_get_rps": "authenticated GET /v1/jobs/{id}, one uvicorn worker, wrk -t1 -c16 -d10s from a separate process (wrk, Redis and the gateway share the 2 cores)",
    "status_get_rps_c64": "the same with 64 connections (more connections cost uvicorn/asyncio per request)",
    "upload_mb_per_s": "200 MB raw-body upload (a valid mp4 padded with zeros) through the gateway, streamed to the spool, probed and stored",
    "upload_rss_delta_mb": "gateway peak RSS (VmHWM) after the 200 MB upload minus after a 2 MB upload, same process",
    **BODY_DESCRIPTIONS,
    **KINEMATICS_DESCRIPTIONS,
    **MODEL_DESCRIPTIONS,
}


def merge_results(results: dict[str, float], target: str, script: str) -> None:
    """Merge one benchmark's figures into bench/results.json and rewrite bench/RESULTS.md, keeping
    the other benchmarks' figures; `make <target>` (`python bench/<script>`) produced them."""
    path = REPO / "bench" / "results.json"
    merged = {**json.loads(path.read_text()), **results} if path.exists() else results
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    write_markdown(merged, f"make {target}` (`python bench/{script}`, its keys only, merged into the last `make bench")
    print(json.dumps(results, indent=2))


def _cell(text: str) -> str:
    """Text for a markdown table cell (a bare | would end the cell)."""
    return text.replace("|", "\\|")


def write_markdown(results: dict[str, float], command: str = f"{COMMAND}` (`python bench/run.py") -> None:
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `{command}`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, no GPU.",
        "The machine is shared and noisy: compare figures measured in the same run.",
        "",
        "| key | value | what was measured |",
        "|---|---|---|",
    ]
    lines += [f"| `{k}` | {v} | {_cell(DESCRIPTIONS.get(k, ''))} |" for k, v in sorted(results.items())]
    lines += ["", "Targets (issue 2): `job_overhead_ms_p50` ≤ 50, `status_get_rps` ≥ 1500, "
              "`upload_rss_delta_mb` ≤ 50.",
              "Targets (issue 3): `synth_pa_mpjpe_mm_after` ≤ 40 and ≥ 20 % below `synth_pa_mpjpe_mm_before`; "
              "`reproj_err_bbox_frac_after` ≤ 0.02; `crossview_pa_mpjpe_mm` ≤ 60; `ort_vs_eager_b32` ≥ 1.5; "
              "`refine_ms_per_frame` ≤ 10; `body_vs_keypoints_time` ≤ 0.5.",
              "Targets (issue 4): `neurik_rmse_deg_mean_synth` and `neurik_rmse_deg_mean_real` ≤ 2, "
              "`neurik_rmse_deg_max_lower_limb` ≤ 4, `neurik_speedup_vs_opensim` ≥ 100 (the `neurik_*` keys: the "
              "network alone; `neurik_fit_*`: the network then the marker fit, as `ik=neurik` serves it); "
              "`crossview_joint_angle_deg` and its six angles are reported (per-coordinate RMSE of both in "
              "bench/neurik_rmse_per_coordinate.json).",
              "Targets (issue 5): `parity_max_abs` ≤ 1e-4; `mqhmr_refine_reproj_drop` ≥ 0.2; "
              "`hand_pa_mpjpe_mm_synth` ≤ 15.",
              ""]
    lines += gpu_markdown(results)
    (REPO / "bench" / "RESULTS.md").write_text("\n".join(lines))


def gpu_markdown(results: dict[str, float], path: Path = REPO / "bench" / "gpu_results.json") -> list[str]:
    """The paper-size graphs' cost: GFLOPs per frame beside what 800 TFLOP/s allows, and the GPU figures
    bench/gpu.sh recorded on a GPU machine (bench/gpu_results.json), when there are any."""
    lines = ["## Paper-size graphs", "",
             f"| graph | GFLOPs per frame | frames/s at {TFLOPS:g} TFLOP/s |", "|---|---|---|"]
    for key, name in (("mqhmr_paper", "MQ-HMR (ViT-H/16 256x192, pyramid, deformable decoder)"),
                      ("vit_h16", "ViT-H/16 backbone alone"), ("genhmr_paper_step", "GenHMR step (image tokens)"),
                      ("genhmr_paper_frame", "GenHMR per frame (backbone + 5 steps)")):
        if f"gflops_{key}" in results:
            g = results[f"gflops_{key}"]
            lines.append(f"| {name} | {g} | {TFLOPS * 1e3 / g:.0f} |")
    if not path.is_file():
        return [*lines, "", "No GPU figures yet: run `bench/gpu.sh` on a machine with an NVIDIA GPU.", ""]
    gpu = json.loads(path.read_text())
    info = gpu["info"]
    lines += ["", f"## GPU ({info['device']}, {info['gpu_memory_gib']} GiB; PyTorch {info['torch']}, CUDA {info['cuda']}; "
              f"{info['when']})", "",
              "Measured by `bench/gpu.sh` (bench/gpu_results.json holds every figure and the commands). PyTorch's "
              "CUDA path: fp32 without TF32, fp16 = half-precision weights and activations; CUDA events, median "
              "of 10 calls after 3 warm-ups; random weights (speed does not depend on them). ONNX Runtime's CUDA "
              f"provider: {ort_status(gpu)}.", "",
              "| graph | params (M) | fp32 frames/s (batch 1 / 16 / 64 / 128) | fp16 frames/s (same) | peak GiB fp32 / fp16 at 128 | fp16 max abs vs fp32 | fp16 TFLOP/s |",
              "|---|---|---|---|---|---|---|"]
    for name, g in gpu["graphs"].items():
        if "error" in g:
            lines.append(f"| {name} | | failed: {g['error']} | | | | |")
            continue
        fps = {p: " / ".join(f"{r['frames_per_s']:g}" for r in g[p]) for p in ("fp32", "fp16")}
        lines.append(f"| {name} | {g['params_m']} | {fps['fp32']} | {fps['fp16']} | {g['fp32'][-1]['peak_gib']} / "
                     f"{g['fp16'][-1]['peak_gib']} | {g['fp16_max_abs_vs_fp32']:.1e} | {g['fp16_best_tflops']} |")
    lines += ["", "| job stage on the GPU (fp32) | frames | ms per call | frames/s |", "|---|---|---|---|"]
    for key in sorted((k for k in gpu if k.startswith("job_stages")), key=lambda k: int(re.sub(r"\D", "", k) or 0)):
        for stage, r in gpu[key].items():
            if "error" not in r:
                extra = f" (reprojection drop {r['reproj_drop']})" if "reproj_drop" in r else ""
                lines.append(f"| {stage}{extra} | {r['batch']} | {r['ms_per_call']} | {r['frames_per_s']:,.0f} |")
    pipe = gpu.get("pipeline", {})
    if pipe.get("status") == "measured":
        stages = ", ".join(f"{k} {v:g} s" for k, v in pipe["stages_s"].items())
        lines += ["", f"One whole job in process ({pipe['clip']}, {pipe['frames']} frames, every output): "
                      f"{pipe['seconds']} s ({stages})."]
    return [*lines, "", *ort_markdown(gpu), ""]


def ort_status(gpu: dict) -> str:
    status = gpu.get("onnxruntime", {}).get(
        "status", "not yet measured (that machine had no onnxruntime-gpu; bench/gpu.sh measures it where there is one)")
    return "measured (below)" if status == "measured" else status


def ort_markdown(gpu: dict) -> list[str]:
    """bench/gpu.sh's ONNX Runtime part, when it was measured: the body stage on IO-bound CUDA graphs,
    float32 and fp16 bundles, and the batch sizes tuned on the card."""
    ort = gpu.get("onnxruntime", {})
    if ort.get("status") != "measured":
        return []
    lines = [f"ONNX Runtime {ort['onnxruntime']} ({ort['provider']}, IO binding of torch tensors):", "",
             "| bundle | body stage frames/s by track length | peak GiB (PyTorch / whole card) | host copies | "
             "tuned batches |", "|---|---|---|---|---|"]
    for name in ("fp32", "fp16"):
        e = ort.get(name, {})
        if "error" in e:
            lines.append(f"| {name} | failed: {e['error']} | | | |")
            continue
        runs = {k: v for k, v in e.items() if k.startswith("body_stage_")}
        fps = " / ".join(f"{v['frames_per_s']:g} ({k.split('_')[2]})" for k, v in runs.items())
        peak = (f"{max(v['peak_torch_gib'] or 0.0 for v in runs.values())} / "
                f"{max(v.get('device_used_gib') or 0.0 for v in runs.values())}") if runs else ""
        tuned = ", ".join(f"{g} {t['batch']}" for g, t in e.get("tuned", {}).items())
        lines.append(f"| {name} | {fps} | {peak} | {e.get('host_copies')} | {tuned} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
