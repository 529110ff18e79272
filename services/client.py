"""A small synchronous HTTP client of the REST API (CLI `submit`, the demo, tests, benchmarks)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

CHUNK = 1 << 20


class ApiError(Exception):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code = problem.get("code", "unknown")
        self.detail = problem.get("detail", "")
        super().__init__(f"{status} {self.code}: {self.detail}")


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=timeout)

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def _check(resp: httpx.Response) -> httpx.Response:
        if resp.status_code >= 400:
            try:
                problem = resp.json()
            except ValueError:
                problem = {"detail": resp.text[:500]}
            raise ApiError(resp.status_code, problem)
        return resp

    def submit(self, clip: Path, *, target_fps: float | None = None, max_people: int = 1,
               idempotency_key: str | None = None, progress: bool = False, **options: str) -> dict[str, Any]:
        """Upload `clip` as the raw request body (streamed) and return the job document. Other job
        options (`ik`, `body_model`, `outputs` as a comma-separated string) go as query parameters."""
        size = clip.stat().st_size
        params: dict[str, Any] = {"max_people": max_people, **{k: v for k, v in options.items() if v is not None}}
        if target_fps:
            params["target_fps"] = target_fps
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key

        def body(advance=lambda n: None) -> Iterator[bytes]:
            with clip.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    advance(len(chunk))
                    yield chunk

        if not progress:
            return self._check(self.http.post("/v1/jobs", params=params, headers=headers, content=body())).json()
        with Progress(TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=Console(stderr=True)) as bar:
            task = bar.add_task("upload", total=size)
            resp = self.http.post("/v1/jobs", params=params, headers=headers,
                                  content=body(lambda n: bar.advance(task, n)))
        return self._check(resp).json()

    def get(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/jobs/{job_id}")).json()

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Server-sent events of a job until it ends."""
        # the server sends a keepalive every 15 s: a minute of silence means the connection is dead
        timeout = httpx.Timeout(10.0, read=60.0)
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    yield json.loads(line[5:].strip())

    def wait(self, job_id: str, progress: bool = False) -> dict[str, Any]:
        """Follow events until the job ends; returns the final job document."""
        if not progress:
            for _ in self.events(job_id):
                pass
            return self.get(job_id)
        with Progress(TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), console=Console(stderr=True)) as bar:
            task = bar.add_task("queued", total=1.0)
            for ev in self.events(job_id):
                bar.update(task, description=ev.get("stage") or ev["state"], completed=ev.get("progress", 0.0))
        return self.get(job_id)

    def result_bytes(self, job_id: str) -> bytes:
        return self._check(self.http.get(f"/v1/jobs/{job_id}/result")).content

    def artifact(self, job_id: str, name: str) -> bytes:
        """One binary artifact of a finished job (names in the job document's `artifacts`)."""
        return self._check(self.http.get(f"/v1/jobs/{job_id}/artifacts/{name}")).content

    def result(self, job_id: str) -> dict[str, Any]:
        return json.loads(self.result_bytes(job_id))
