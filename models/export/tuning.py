"""Batch sizes tuned per graph and device, recorded in the bundle's manifest.

    python -m kinemesh.models.export.bundle tune var/models/bundle/default [--device cpu|cuda]

For each graph, throughput (items/s) is measured at batch 1, 2, 4, ... up to the Triton configs'
max batch size, through `OrtBackend.run_bound` on tensors of the device (IO binding, as the worker
runs them): the median of at least `repeats` timed calls, and at least a quarter second of them,
after a warm-up call, best of three sweeps (noise only slows). Doubling stops early once a call takes
longer than `max_call_s`. The tuned
batch is the smallest within `tolerance` of the best throughput: a larger one adds latency and
memory for nothing. The manifest's `tuning` maps a device key ("cpu", or "cuda:<card name>") to
each graph's tuned batch and its measured curve; the worker's stages read their device's batch
(`Bundle.batch_for`) and keep their defaults where the bundle was not tuned for it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from kinemesh.models.backends.base import random_inputs


def device_key(device: str, device_id: int = 0) -> str:
    """"cpu", or "cuda:<the card's name>" (tuning on one card does not speak for another)."""
    if device == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device_id)}" if torch.cuda.is_available() else "cuda"
    return "cpu"


def tuned_batch(manifest: dict[str, Any], graph: str, key: str) -> int | None:
    """The batch the bundle was tuned to for `graph` on the device `key`, or None."""
    entry = manifest.get("tuning", {}).get(key, {}).get("graphs", {}).get(graph)
    return int(entry["batch"]) if entry else None


def measure_curve(backend: Any, graph: str, int_high: int, device: torch.device, max_batch: int,
                  repeats: int = 5, max_call_s: float = 2.0, min_total_s: float = 0.25,
                  rounds: int = 3) -> dict[int, float]:
    """items/s at batch 1, 2, 4, ... <= max_batch (the first round stops after a call over `max_call_s`).
    Each batch's figure is the median call of at least `repeats` calls and at least `min_total_s` seconds
    of them (short calls are noisy), and the best of `rounds` sweeps: a shared machine's noise only ever
    slows a call, so the best sweep is the closest to what the batch can do."""
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)

    def items_per_s(batch: int) -> tuple[float, float]:
        feeds = random_inputs(backend.inputs(graph), batch, int_high, device, gen)
        backend.run_bound(graph, feeds)  # warm-up: first-call allocations
        runs: list[float] = []
        while len(runs) < repeats or sum(runs) < min_total_s:
            t0 = time.perf_counter()
            backend.run_bound(graph, feeds)
            sync(device)
            runs.append(time.perf_counter() - t0)
        seconds = statistics.median(runs)
        return batch / seconds, seconds

    curve: dict[int, float] = {}
    batch = 1
    while batch <= max_batch:
        curve[batch], seconds = items_per_s(batch)
        if seconds > max_call_s:
            break
        batch *= 2
    for _ in range(rounds - 1):
        for b in curve:
            curve[b] = max(curve[b], items_per_s(b)[0])
    return curve


def choose(curve: dict[int, float], tolerance: float = 0.05) -> int:
    """The smallest batch within `tolerance` of the best throughput."""
    best = max(curve.values())
    return min(b for b, v in curve.items() if v >= (1 - tolerance) * best)


def tune_bundle(root: Path, device: str = "cpu", graphs: list[str] | None = None, max_batch: int = 256,
                repeats: int = 5, threads: int = 0, device_id: int = 0) -> dict[str, Any]:
    """Tune the bundle at `root` on `device` ("cpu" or "cuda") and record it in its manifest; returns
    the recorded entry."""
    from kinemesh.models.backends.ort import OrtBackend
    from kinemesh.models.export.bundle import MANIFEST, open_bundle

    bundle = open_bundle(root)
    backend = OrtBackend(device=device, intra_op_threads=threads, device_id=device_id)
    on = torch.device("cuda", backend.device_id) if backend.device == "cuda" else torch.device("cpu")
    chosen = graphs or list(bundle.manifest["graphs"])
    entry: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "intra_op_threads": threads, "providers": backend.providers},
        "rule": "smallest batch within 5% of the best items/s (median of timed IO-bound runs, best of 3 sweeps)",
        "graphs": {},
    }
    for graph in chosen:
        backend.load(graph, bundle.graph_path(graph))
        curve = measure_curve(backend, graph, bundle.token_range(graph), on, max_batch, repeats)
        entry["graphs"][graph] = {"batch": choose(curve), "items_per_s": {str(b): round(v, 2) for b, v in curve.items()}}
    manifest = json.loads((bundle.root / MANIFEST).read_text())
    manifest.setdefault("tuning", {})[device_key(backend.device, backend.device_id)] = entry
    (bundle.root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # not among the hashed files
    return entry
