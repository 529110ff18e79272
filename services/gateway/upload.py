"""Streaming upload to a spool file, for raw bodies and multipart forms.

Bytes are written as they arrive and counted; past the limit the request stops with 413 and
the partial file is removed. Nothing is held in memory beyond one chunk. Multipart is parsed
incrementally with python-multipart's push parser (Starlette's own form parsing has no total
size limit and would spool the whole body first).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from kinemesh.services.common.errors import EmptyUpload, InvalidRequest, UploadTooLarge

MAX_FIELD_BYTES = 64 * 1024  # the JSON `options` part
MAX_ENVELOPE_BYTES = 1024 * 1024  # multipart headers, boundaries and other parts, all together
KEPT_FIELDS = frozenset({"options"})  # other non-file parts are read past, never stored


@dataclass
class SpooledUpload:
    path: Path
    size: int
    sha256: str
    form_fields: dict[str, str] = field(default_factory=dict)

    def options_json(self) -> dict[str, Any]:
        raw = self.form_fields.get("options")
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"the `options` part is not JSON: {exc.msg}") from exc
        if not isinstance(value, dict):
            raise InvalidRequest("the `options` part must be a JSON object")
        return value


class _Sink:
    """Writes file bytes to the spool, counting and hashing, enforcing the limit."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self.fh = fh
        self.limit = limit
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge.over(self.limit)
        self.hash.update(data)
        self.fh.write(data)


async def spool_raw(chunks: AsyncIterator[bytes], dest: Path, limit: int) -> SpooledUpload:
    try:
        with dest.open("wb") as fh:
            sink = _Sink(fh, limit)
            async for chunk in chunks:
                if chunk:
                    sink.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    if sink.size == 0:
        dest.unlink(missing_ok=True)
        raise EmptyUpload("the request body is empty; send the video as the body or a multipart `file` part")
    return SpooledUpload(dest, sink.size, sink.hash.hexdigest())


async def spool_multipart(chunks: AsyncIterator[bytes], content_type: str, dest: Path,
                          limit: int) -> SpooledUpload:
    """Parse a multipart body: the part named `file` (or `video`) is spooled, small fields are kept."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart body without a boundary")

    fields: dict[str, str] = {}
    state: dict[str, Any] = {"name": None, "is_file": False, "buf": bytearray(), "files": 0,
                             "header_field": bytearray(), "header_value": bytearray(), "headers": {}}

    def on_part_begin() -> None:
        state["headers"] = {}
        state["buf"] = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header_field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["header_value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][bytes(state["header_field"]).lower()] = bytes(state["header_value"])
        state["header_field"], state["header_value"] = bytearray(), bytearray()

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        state["is_file"] = name in ("file", "video")
        if state["is_file"]:
            state["files"] += 1
            if state["files"] > 1:
                raise InvalidRequest("send exactly one video part (`file`)")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["is_file"]:
            sink.write(data[start:end])
        elif state["name"] in KEPT_FIELDS:
            state["buf"] += data[start:end]
            if len(state["buf"]) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"form field {state['name']!r} is larger than {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if not state["is_file"] and state["name"] in KEPT_FIELDS:
            fields[state["name"]] = state["buf"].decode("utf-8", "replace")

    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end,
        })
    except Exception as exc:  # e.g. a boundary longer than the parser accepts
        raise InvalidRequest(f"unusable multipart boundary: {exc}") from exc
    envelope_limit = limit + MAX_ENVELOPE_BYTES  # the whole body, other parts included
    received = 0
    fh = dest.open("wb")
    sink = _Sink(fh, limit)
    try:
        with fh:
            async for chunk in chunks:
                if chunk:
                    received += len(chunk)
                    if received > envelope_limit:
                        raise UploadTooLarge.over(limit)
                    parser.write(chunk)
            parser.finalize()
    except BaseException as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, (UploadTooLarge, InvalidRequest, ClientDisconnect)):
            raise
        if isinstance(exc, Exception):
            raise InvalidRequest(f"malformed multipart body: {exc}") from exc
        raise
    if state["files"] == 0 or sink.size == 0:
        dest.unlink(missing_ok=True)
        raise EmptyUpload("the multipart body has no non-empty `file` part")
    return SpooledUpload(dest, sink.size, sink.hash.hexdigest(), fields)
