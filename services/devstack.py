"""Start a local stack (Redis, gateway, worker) as real processes: used by `make demo`, the
integration tests and the benchmarks, so all three exercise the same start-up path."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from kinemesh.services.cli import gateway_command, terminate_all, worker_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def install_redis_server() -> None:
    """Install Debian's redis-server package (needs root; used by `make demo` on a bare machine)."""
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


@dataclass
class PrivateRedis:
    """A redis-server on a free loopback port, in a temp folder, nothing persisted."""

    proc: subprocess.Popen
    url: str
    workdir: Path

    @classmethod
    def start(cls, install: bool = False) -> PrivateRedis:
        exe = shutil.which("redis-server")
        if exe is None and install:
            install_redis_server()
            exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="kinemesh-redis-"))
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(workdir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            if redis_reachable(url):
                return cls(proc, url, workdir)
            time.sleep(0.05)
        proc.kill()
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def resolve_redis(install: bool = False) -> tuple[str, PrivateRedis | None]:
    """KINEMESH_REDIS_URL if set, else a private redis-server started here."""
    url = os.environ.get("KINEMESH_REDIS_URL")
    if url:
        if not redis_reachable(url):
            raise RuntimeError(f"KINEMESH_REDIS_URL={url} is not reachable")
        return url, None
    private = PrivateRedis.start(install=install)
    return private.url, private


@dataclass
class Stack:
    """A gateway and workers sharing one Redis and one storage folder, isolated by key prefix and queue."""

    redis_url: str
    root: Path
    model_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    gateway: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def create(cls, redis_url: str, root: Path, model_dir: Path, **extra_env: str) -> Stack:
        tag = uuid.uuid4().hex[:8]
        env = {
            **os.environ,
            "KINEMESH_REDIS_URL": redis_url,
            "KINEMESH_KEY_PREFIX": f"km-{tag}",
            "KINEMESH_QUEUE": f"kinemesh.gpu.{tag}",
            "KINEMESH_STORAGE_DIR": str(root / "storage"),
            "KINEMESH_MODEL_DIR": str(model_dir),
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        root.mkdir(parents=True, exist_ok=True)
        return cls(redis_url=redis_url, root=root, model_dir=model_dir, env=env, port=free_port())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def prefix(self) -> str:
        return self.env["KINEMESH_KEY_PREFIX"]

    @property
    def queue(self) -> str:
        return self.env["KINEMESH_QUEUE"]

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def start_gateway(self, timeout: float = 30.0, workers: int = 1) -> None:
        log = (self.root / "gateway.log").open("ab")
        self.gateway = subprocess.Popen(gateway_command("127.0.0.1", self.port, workers), env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gateway.poll() is not None:
                raise RuntimeError(f"gateway exited; see {self.root / 'gateway.log'}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready after {timeout} s; see {self.root / 'gateway.log'}")

    def start_worker(self, timeout: float = 120.0) -> subprocess.Popen:
        n = len(self.workers)
        log = (self.root / f"worker{n}.log").open("ab")
        proc = subprocess.Popen(worker_command(self.queue, f"w{n}-{self.prefix}@%h"), env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        key = f"{self.prefix}:worker:ready:{proc.pid}"
        r = self.redis()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited; see {self.root / f'worker{n}.log'}")
            if r.exists(key):
                return proc
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout} s; see {self.root / f'worker{n}.log'}")

    def create_key(self, tenant: str) -> str:
        out = subprocess.run([sys.executable, "-m", "kinemesh", "keys", "create", "--tenant", tenant],
                             env=self.env, check=True, capture_output=True, text=True)
        return out.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        terminate_all([p for p in [self.gateway, *self.workers] if p is not None], timeout=10)
        r = self.redis()
        keys = list(r.scan_iter(match=f"{self.prefix}:*", count=500))
        if keys:
            r.delete(*keys)
        r.delete(self.queue, f"{self.queue}\x06\x163", f"{self.queue}\x06\x166", f"{self.queue}\x06\x169")
