"""`make demo`: start Redis (if needed), the gateway and a worker, submit a real clip through
the HTTP API, wait for it, and print where the result is and a summary."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console

from kinemesh.models.assets.pose2sim_clips import ensure_demo_clips
from kinemesh.services.client import Client
from kinemesh.services.devstack import Stack, resolve_redis

console = Console()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kinemesh.services.demo")
    parser.add_argument("--var", type=Path, default=Path("var"), help="folder for models, clips and outputs")
    parser.add_argument("--clip", default="single_cam01", help="which Pose2Sim demo clip")
    args = parser.parse_args(argv)

    clip = ensure_demo_clips(args.var / "cache" / "pose2sim")[args.clip]
    redis_url, private = resolve_redis(install=True)
    console.print(f"Redis: {redis_url}" + (" (private, started for the demo)" if private else ""))
    stack = Stack.create(redis_url, (args.var / "demo").resolve(), (args.var / "models").resolve(),
                         KINEMESH_ENVIRONMENT="development")
    try:
        with console.status("starting gateway and worker (loading models)"):
            stack.start_gateway()
            stack.start_worker()
        api_key = stack.create_key("demo")
        console.print(f"gateway {stack.url}; worker ready; API key created for tenant 'demo'")
        client = Client(stack.url, api_key)
        t0 = time.perf_counter()
        job = client.submit(clip, progress=True)
        console.print(f"submitted {clip.name} ({clip.stat().st_size / 1e6:.1f} MB) as job {job['id']}")
        job = client.wait(job["id"], progress=True)
        took = time.perf_counter() - t0
        if job["state"] != "succeeded":
            console.print(f"[red]job {job['state']}[/red]: {json.dumps(job.get('error'))}")
            return 1
        result = client.result(job["id"])
        out = stack.root / "result.json"
        out.write_text(json.dumps(result))
        s = result["summary"]
        console.print(f"[green]result saved to {out}[/green] (served at {stack.url}{job['result_url']} "
                      "while the demo ran)")
        console.print(f"frames: {s['frames']}, frames with a person: {s['frames_with_person']}, "
                      f"tracks: {s['tracks']}, seconds taken: {took:.2f} (pipeline {s['seconds']:.2f})")
        body, model = s.get("body"), result.get("body_model")
        if body and model:
            meshes = [t["body"]["mesh_artifact"] for t in result["tracks"] if t.get("body")]
            for name in meshes:
                (stack.root / name).write_bytes(client.artifact(job["id"], name))
            stage_s = {t["stage"]: t["seconds"] for t in result["timings"]}
            console.print(
                f"body: {body['frames_meshed']} frames meshed with {model['pose_model']} on {model['name']} "
                f"({model['bundle']}, {model['refinement_steps']} refinement steps, {stage_s.get('body', 0):.2f} s); "
                f"reprojection error {body['reprojection_error_px_before']:.1f} px -> "
                f"{body['reprojection_error_px_after']:.1f} px "
                f"({100 * body['reprojection_error_bbox_frac_before']:.2f}% -> "
                f"{100 * body['reprojection_error_bbox_frac_after']:.2f}% of the person's height)")
            if meshes:
                console.print(f"animated mesh: {stack.root / meshes[0]}")
        kin = s.get("kinematics")
        tracks = [t for t in result["tracks"] if t.get("kinematics")]
        if kin and tracks:
            tk = tracks[0]["kinematics"]
            ranges = {r["name"]: r for r in tk["ranges"]}
            shown = ", ".join(f"{n} {round(ranges[n]['min']):d}..{round(ranges[n]['max']):d} deg"
                              for n in ("hip_flexion_r", "hip_flexion_l", "knee_angle_r", "knee_angle_l"))
            mot = stack.root / tk["mot_artifact"]
            mot.write_bytes(client.artifact(job["id"], tk["mot_artifact"]))
            model = result["kinematics_model"]
            method = model["method"] + (f" + {model['fit_iterations']}-step marker fit" if model["fit_iterations"] else "")
            console.print(f"kinematics ({method}, {kin['frames']} frames, marker "
                          f"error {1000 * kin['marker_error_rms_m']:.0f} mm RMS): {shown}")
            console.print(f"OpenSim motion file: {mot}")
        return 0
    finally:
        stack.stop()
        if private:
            private.stop()


if __name__ == "__main__":
    raise SystemExit(main())
