"""Streaming upload parsing: limits enforced while streaming, nothing left behind on errors."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from kinemesh.services.common.errors import EmptyUpload, InvalidRequest, UploadTooLarge
from kinemesh.services.gateway.api.app import SPOOL_STALE_S, _clean_spool
from kinemesh.services.gateway.upload import spool_multipart, spool_raw


async def _chunks(*parts: bytes):
    for p in parts:
        yield p


def _form(boundary: str, parts: list[tuple[str, bytes]]) -> bytes:
    out = b""
    for name, data in parts:
        filename = '; filename="v.mp4"' if name == "file" else ""
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n").encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_raw_upload_counts_hashes_and_enforces_the_limit(tmp_path: Path) -> None:
    up = asyncio.run(spool_raw(_chunks(b"ab", b"cd"), tmp_path / "a", limit=10))
    assert (up.size, up.path.read_bytes()) == (4, b"abcd")
    assert up.sha256 == "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"
    with pytest.raises(UploadTooLarge):
        asyncio.run(spool_raw(_chunks(b"x" * 6, b"y" * 6), tmp_path / "b", limit=10))
    with pytest.raises(EmptyUpload):
        asyncio.run(spool_raw(_chunks(), tmp_path / "c", limit=10))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_multipart_keeps_the_file_and_only_the_options_part(tmp_path: Path) -> None:
    body = _form("XyZ", [("note", b"n" * 1000), ("options", b'{"max_people": 2}'), ("file", b"VIDEO")])
    # split the body at awkward places to exercise the push parser
    pieces = [body[i:i + 7] for i in range(0, len(body), 7)]
    up = asyncio.run(spool_multipart(_chunks(*pieces), "multipart/form-data; boundary=XyZ", tmp_path / "m", 100))
    assert up.path.read_bytes() == b"VIDEO"
    assert up.form_fields == {"options": '{"max_people": 2}'} and up.options_json() == {"max_people": 2}


@pytest.mark.parametrize(("ctype", "body", "error"), [
    ("multipart/form-data", b"", InvalidRequest),  # no boundary
    ("multipart/form-data; boundary=" + "b" * 300, b"--x", InvalidRequest),  # boundary too long
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n"
     + b"x" * 5000, UploadTooLarge),  # other parts count towards the envelope
    ("multipart/form-data; boundary=b", _form("b", [("options", b"{}")]), EmptyUpload),  # no file part
    ("multipart/form-data; boundary=b", _form("b", [("file", b"a"), ("file", b"b")]), InvalidRequest),
])
def test_multipart_errors_are_typed_and_leave_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      ctype: str, body: bytes, error: type) -> None:
    monkeypatch.setattr("kinemesh.services.gateway.upload.MAX_ENVELOPE_BYTES", 1000)
    with pytest.raises(error):
        asyncio.run(spool_multipart(_chunks(body), ctype, tmp_path / "m", limit=100))
    assert not (tmp_path / "m").exists()


def test_options_part_must_be_a_json_object(tmp_path: Path) -> None:
    body = _form("b", [("options", b"[1, 2]"), ("file", b"V")])
    up = asyncio.run(spool_multipart(_chunks(body), "multipart/form-data; boundary=b", tmp_path / "m", 100))
    with pytest.raises(InvalidRequest):
        up.options_json()


def test_stale_spool_files_are_removed_at_start(tmp_path: Path) -> None:
    old, new = tmp_path / "old.upload", tmp_path / "new.upload"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    past = time.time() - SPOOL_STALE_S - 10
    os.utime(old, (past, past))
    _clean_spool(tmp_path)
    assert not old.exists() and new.exists()
