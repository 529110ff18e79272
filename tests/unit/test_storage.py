"""Storage backends: the same invariants for the local folder and an S3-compatible server.

S3 runs against moto's S3 server over HTTP (a stand-in for the cloud, which this machine cannot reach).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kinemesh.services.common.errors import NotFound
from kinemesh.services.common.storage import LocalStorage, S3Storage, job_key, job_prefix


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    from kinemesh.services.devstack import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    import boto3

    endpoint = request.getfixturevalue("s3_endpoint")
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"b{tmp_path.name.replace('_', '').lower()[:40]}"
    client.create_bucket(Bucket=bucket)
    return S3Storage(bucket, prefix="kinemesh/", client=client)


def test_roundtrip_and_listing(storage, tmp_path: Path) -> None:
    src = tmp_path / "clip.bin"
    src.write_bytes(b"\x00\x01" * 5000)
    k_in = job_key("acme", "job1", "input.video")
    storage.put_file(k_in, src)
    storage.put_bytes(job_key("acme", "job1", "result.json"), b"{}")
    storage.put_bytes(job_key("acme", "job2", "result.json"), b"{}")
    assert storage.exists(k_in) and storage.size(k_in) == 10000
    assert b"".join(storage.iter_chunks(k_in, 4096)) == src.read_bytes()
    with storage.open_local(k_in) as path:
        assert path.read_bytes() == src.read_bytes()
    assert storage.list_prefix(job_prefix("acme", "job1")) == [
        "tenants/acme/jobs/job1/input.video", "tenants/acme/jobs/job1/result.json"]
    storage.check_writable()


def test_delete_prefix_removes_only_that_job(storage) -> None:
    storage.put_bytes(job_key("acme", "job1", "result.json"), b"1")
    storage.put_bytes(job_key("acme", "job10", "result.json"), b"2")
    assert storage.delete_prefix(job_prefix("acme", "job1")) == 1
    assert not storage.exists(job_key("acme", "job1", "result.json"))
    assert storage.get_bytes(job_key("acme", "job10", "result.json")) == b"2"


def test_missing_object_is_not_found(storage) -> None:
    with pytest.raises(NotFound):
        storage.get_bytes(job_key("acme", "nope", "result.json"))
    with pytest.raises(NotFound):
        storage.size(job_key("acme", "nope", "result.json"))
    storage.delete(job_key("acme", "nope", "result.json"))  # deleting twice is harmless


@pytest.mark.parametrize("name", ["../etc/passwd", "a/../../b", "/abs", "UPPER", "", "x" * 80, "a b"])
def test_user_supplied_names_never_become_keys(name: str) -> None:
    with pytest.raises(NotFound):
        job_key("acme", "job1", name)


def test_local_keys_cannot_escape_root(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    with pytest.raises(ValueError):
        store.put_bytes("../outside", b"x")
    assert not (tmp_path / "outside").exists()
