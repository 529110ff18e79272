"""A real tritonserver for tests and benchmarks: nvidia-pytriton's bundled server in its own
virtualenv (it pins numpy < 2; the project runs numpy 2), serving a bundle's graphs through
`serve_bundle.py` on free loopback ports."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kinemesh.services.devstack import free_port

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"


def ensure_venv(venv: Path) -> Path:
    """The Triton virtualenv's python, created (and `requirements.txt` installed) when missing or
    out of date; about 30 s and 400 MB the first time."""
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.is_file() and stamp.is_file() and stamp.read_text() == want:
        return python
    print(f"\n[kinemesh] creating the Triton test virtualenv at {venv} (nvidia-pytriton, numpy < 2) ...",
          file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(want)
    return python


@dataclass
class TritonServer:
    proc: subprocess.Popen
    url: str  # gRPC host:port
    log: Path

    @classmethod
    def start(cls, bundle: Path, venv: Path, graphs: list[str] | None = None, timeout_s: float = 180.0) -> TritonServer:
        python = ensure_venv(venv)
        libdir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, check=True).stdout.strip()
        # pytriton's server loads the interpreter's shared library; a pyenv Python keeps it here
        env = {**os.environ, "LD_LIBRARY_PATH": ":".join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))}
        grpc, http, metrics = free_port(), free_port(), free_port()
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"kinemesh-triton-{grpc}.log"
        cmd = [str(python), str(HERE / "serve_bundle.py"), str(bundle), "--grpc-port", str(grpc),
               "--http-port", str(http), "--metrics-port", str(metrics)]
        if graphs:
            cmd += ["--graphs", ",".join(graphs)]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "ready" in log.read_text().splitlines():
                return cls(proc, f"127.0.0.1:{grpc}", log)
            if proc.poll() is not None:
                break
            time.sleep(0.5)
        proc.kill()
        raise RuntimeError(f"tritonserver did not start; its log ({log}):\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
