"""Object storage for uploads, results and artifacts: a local folder or an S3-compatible bucket.

Keys are built here from server-side ids (`job_key`), never from names a user supplied.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from kinemesh.services.common.errors import NotFound, StorageUnavailable
from kinemesh.services.common.settings import Settings

_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,255}$")
ARTIFACT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
INPUT_NAME = "input.video"
RESULT_NAME = "result.json"


def job_prefix(tenant_id: str, job_id: str) -> str:
    return f"tenants/{tenant_id}/jobs/{job_id}/"


def job_key(tenant_id: str, job_id: str, name: str) -> str:
    """Key of a job's object; `name` is a fixed name or an artifact name the worker chose."""
    if not ARTIFACT_NAME_RE.match(name):
        raise NotFound(f"no object named {name!r}")
    return job_prefix(tenant_id, job_id) + name


def _check_key(key: str) -> str:
    if not _KEY_RE.match(key) or ".." in key or key.startswith("/"):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(Protocol):
    def put_file(self, key: str, path: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def open_local(self, key: str) -> Iterator[Path]: ...  # a context manager
    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def list_prefix(self, prefix: str) -> list[str]: ...
    def check_writable(self) -> None: ...


class LocalStorage:
    """Objects as files under a root folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / _check_key(key)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key escapes the storage root: {key!r}")
        return path

    def _atomic_target(self, key: str) -> tuple[Path, Path]:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest, dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")

    def put_file(self, key: str, path: Path) -> None:
        dest, tmp = self._atomic_target(key)
        try:
            try:
                os.link(path, tmp)  # same filesystem: no copy
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        dest, tmp = self._atomic_target(key)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageUnavailable(f"cannot write {key}: {exc}") from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"object {key} does not exist") from exc

    @contextmanager
    def open_local(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"object {key} does not exist")
        yield path

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = path.open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"object {key} does not exist") from exc
        with fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"object {key} does not exist") from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(prefix.rstrip("/"))
        if not folder.exists():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def list_prefix(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    def check_writable(self) -> None:
        try:
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as exc:
            raise StorageUnavailable(f"storage folder {self.root} is not writable: {exc}") from exc


class S3Storage:
    """Objects in an S3-compatible bucket (AWS S3, MinIO, R2...) through boto3."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 client=None) -> None:
        import boto3  # imported here: only deployments using S3 pay for it
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        # S3-compatible stores (MinIO...) behind a custom endpoint want path-style addressing
        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"})
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                                             config=config if endpoint_url else None)

    def _k(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def _call(self, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404") or status == 404:
                raise NotFound("object does not exist") from exc
            raise StorageUnavailable(f"S3 error: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 unreachable: {exc}") from exc

    def put_file(self, key: str, path: Path) -> None:
        self._call(self.client.upload_file, str(path), self.bucket, self._k(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(self.client.put_object, Bucket=self.bucket, Key=self._k(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        return self._call(lambda: self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read())

    @contextmanager
    def open_local(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="kinemesh-s3-") as tmp:
            path = Path(tmp) / Path(key).name
            self._call(self.client.download_file, self.bucket, self._k(key), str(path))
            yield path

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        obj = self._call(self.client.get_object, Bucket=self.bucket, Key=self._k(key))
        yield from obj["Body"].iter_chunks(chunk_size)

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.head_object, Bucket=self.bucket, Key=self._k(key))
            return True
        except NotFound:
            return False

    def size(self, key: str) -> int:
        return int(self._call(self.client.head_object, Bucket=self.bucket, Key=self._k(key))["ContentLength"])

    def list_prefix(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in self._call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self._k(prefix)))):
            keys.extend(o["Key"][len(self.prefix):] for o in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self._k(key))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_prefix(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self.prefix + k} for k in keys[start:start + 1000]]
            out = self._call(self.client.delete_objects, Bucket=self.bucket,
                             Delete={"Objects": batch, "Quiet": True})
            if out.get("Errors"):
                first = out["Errors"][0]
                raise StorageUnavailable(f"S3 kept {len(out['Errors'])} object(s), e.g. {first.get('Key')}: "
                                         f"{first.get('Code')}")
        return len(keys)

    def check_writable(self) -> None:
        key = f"probe/{uuid.uuid4().hex}"
        self.put_bytes(key, b"")
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self._k(key))


def create_storage(settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        assert settings.s3_bucket  # the settings validator guarantees it
        return S3Storage(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region)
    return LocalStorage(settings.storage_dir)
