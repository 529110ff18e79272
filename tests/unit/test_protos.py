"""protos/kinemesh/v1/*.proto compile, and mirror the pydantic wire format field for field.

The protos are compiled with grpcio-tools into a temporary directory and their descriptors
loaded into a private pool: the generated modules are named `kinemesh.v1.*`, and importing
them from a temporary directory would clash with the project's own `kinemesh` package.
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
import typing
from datetime import datetime
from enum import Enum
from pathlib import Path

import pytest
from annotated_types import MaxLen
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pydantic import BaseModel

from kinemesh.services.common import schemas

PROTOS = Path(__file__).resolve().parents[2] / "protos"
PROTO_FILES = sorted(PROTOS.glob("kinemesh/v1/*.proto"))

WIRE_MODELS = sorted(
    (obj for name, obj in vars(schemas).items()
     if isinstance(obj, type) and issubclass(obj, BaseModel) and not name.startswith("_")
     and obj.__module__ == schemas.__name__),
    key=lambda m: m.__name__,
)

# Proto fields with no pydantic field of that name, and why.
EXTRA_PROTO_FIELDS = {
    ("Problem", "extensions"): "RFC 9457 extension members; pydantic keeps them as extra attributes "
                               "(extra='allow'), a proto message needs a field to hold them",
}
# Pydantic fields with no proto field of that name, and why. None so far.
EXTRA_PYDANTIC_FIELDS: dict[tuple[str, str], str] = {}

SCALARS = {
    bool: {FieldDescriptor.TYPE_BOOL},
    int: {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64},
    float: {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE},
    str: {FieldDescriptor.TYPE_STRING},
}

# The REST operations and their RPCs: (request, response, client streams, server streams).
RPCS = {
    "CreateJob": ("CreateJobRequest", "JobDocument", True, False),  # POST /v1/jobs
    "GetJob": ("GetJobRequest", "JobDocument", False, False),  # GET /v1/jobs/{id}
    "ListJobs": ("ListJobsRequest", "JobList", False, False),  # GET /v1/jobs
    "WatchJob": ("WatchJobRequest", "JobEvent", False, True),  # GET /v1/jobs/{id}/events
    "GetResult": ("GetResultRequest", "KinemeshResult", False, False),  # GET /v1/jobs/{id}/result
    "CancelJob": ("CancelJobRequest", "CancelJobResponse", False, False),  # DELETE /v1/jobs/{id}
}


class Compiled(typing.NamedTuple):
    out: Path  # protoc's --python_out / --grpc_python_out
    files: list[descriptor_pb2.FileDescriptorProto]  # ours only, with comments
    pool: descriptor_pool.DescriptorPool


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    out = tmp_path_factory.mktemp("protos")
    desc = out / "descriptors.pb"
    # The command protos/README.md documents, plus a descriptor set with source comments.
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={out}",
           f"--grpc_python_out={out}", f"--descriptor_set_out={desc}", "--include_imports",
           "--include_source_info", *map(str, PROTO_FILES)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", f"protoc warnings:\n{proc.stderr}"
    fds = descriptor_pb2.FileDescriptorSet.FromString(desc.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    ours = [f for f in fds.file if f.package == "kinemesh.v1"]
    return Compiled(out, ours, pool)


def _messages(c: Compiled) -> dict[str, Descriptor]:
    return {name: d for f in c.files for name, d in c.pool.FindFileByName(f.name).message_types_by_name.items()}


def _shape(annotation: object) -> tuple[bool, bool, object]:
    """(nullable, is a list, element type) of a pydantic field annotation."""
    nullable = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        (annotation,) = args
    is_list = typing.get_origin(annotation) is list
    if is_list:
        (annotation,) = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return nullable, is_list, annotation


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def _comments(f: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {tuple(loc.path): (loc.leading_comments + loc.trailing_comments).strip()
            for loc in f.source_code_info.location}


def test_generated_python_and_grpc_code(compiled: Compiled) -> None:
    gen = compiled.out / "kinemesh" / "v1"
    for proto in PROTO_FILES:
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            path = gen / f"{proto.stem}{suffix}"
            compile(path.read_text(), str(path), "exec")
    grpc_code = (gen / "jobs_pb2_grpc.py").read_text()
    assert "class JobServiceStub" in grpc_code and "class JobServiceServicer" in grpc_code


def test_every_wire_model_has_a_message(compiled: Compiled) -> None:
    missing = {m.__name__ for m in WIRE_MODELS} - set(_messages(compiled))
    assert not missing, f"pydantic models without a proto message: {sorted(missing)}"


@pytest.mark.parametrize("model", WIRE_MODELS, ids=lambda m: m.__name__)
def test_field_names_match(compiled: Compiled, model: type[BaseModel]) -> None:
    msg = _messages(compiled)[model.__name__]
    name = model.__name__
    proto = {f for f in msg.fields_by_name if (name, f) not in EXTRA_PROTO_FIELDS}
    pydantic = {f for f in model.model_fields if (name, f) not in EXTRA_PYDANTIC_FIELDS}
    assert proto == pydantic, (f"{name}: only in proto {sorted(proto - pydantic)}, "
                               f"only in pydantic {sorted(pydantic - proto)}")
    for (owner, field), _why in {**EXTRA_PROTO_FIELDS, **EXTRA_PYDANTIC_FIELDS}.items():
        if owner == name:  # an exception that no longer applies must be removed
            assert (field in msg.fields_by_name) != (field in model.model_fields), (owner, field)


@pytest.mark.parametrize("model", WIRE_MODELS, ids=lambda m: m.__name__)
def test_field_types_match(compiled: Compiled, model: type[BaseModel]) -> None:
    msg = _messages(compiled)[model.__name__]
    fdesc = next(f for f in compiled.files if any(m.name == model.__name__ for m in f.message_type))
    mindex = next(i for i, m in enumerate(fdesc.message_type) if m.name == model.__name__)
    for name, info in model.model_fields.items():
        pf = msg.fields_by_name[name]
        where = f"{model.__name__}.{name}"
        nullable, is_list, elem = _shape(info.annotation)
        flattened = typing.get_origin(elem) is tuple  # fixed-size tuple -> repeated scalar
        assert pf.is_repeated == (is_list or flattened), f"{where}: repeated in one, not the other"
        if nullable:
            assert pf.has_presence or pf.is_repeated, f"{where} is nullable: mark it `optional`"
        if pf.has_presence and pf.type != FieldDescriptor.TYPE_MESSAGE:
            assert nullable or not info.is_required(), f"{where} is required: it cannot be `optional`"
        if flattened:
            (scalar,) = set(typing.get_args(elem))
            assert pf.type in SCALARS[scalar], where
            # The proto comment must give the layout: "[a, b, c]" with the tuple's arity, and
            # "NxK" for a list of tuples of fixed length N.
            arity = len(typing.get_args(elem))
            comment = _comments(fdesc)[(4, mindex, 2, pf.index)]
            layouts = [len(m.split(",")) for m in re.findall(r"\[([^\]]+)\]", comment)]
            assert arity in layouts, f"{where}: comment should give the {arity}-value layout"
            if is_list:
                (n,) = [m.max_length for m in info.metadata if isinstance(m, MaxLen)]
                assert f"{n}x{arity}" in comment, f"{where}: comment should say {n}x{arity}"
        elif isinstance(elem, type) and issubclass(elem, BaseModel):
            assert pf.message_type is not None and pf.message_type.name == elem.__name__, where
        elif elem is datetime:
            assert pf.message_type is not None
            assert pf.message_type.full_name == "google.protobuf.Timestamp", where
        elif isinstance(elem, type) and issubclass(elem, Enum):
            assert pf.enum_type is not None and pf.enum_type.name == elem.__name__, where
            _assert_enum_mirrors(pf.enum_type, [e.value for e in elem])
        elif typing.get_origin(elem) is typing.Literal and len(typing.get_args(elem)) > 1:
            assert pf.enum_type is not None, f"{where}: a choice of strings is a proto enum"
            _assert_enum_mirrors(pf.enum_type, typing.get_args(elem))
        elif typing.get_origin(elem) is typing.Literal:  # a constant, sent as its scalar
            (value,) = typing.get_args(elem)
            assert pf.type in SCALARS[type(value)], where
        else:
            assert pf.type in SCALARS[elem], f"{where}: {elem} vs proto type {pf.type}"


def _assert_enum_mirrors(enum: typing.Any, values: typing.Iterable[str]) -> None:
    """Proto enum `FooBar` has FOO_BAR_UNSPECIFIED = 0 and FOO_BAR_<VALUE> per string value ("mq-hmr":
    FOO_BAR_MQ_HMR)."""
    prefix = _upper_snake(enum.name)
    expected = {f"{prefix}_UNSPECIFIED"} | {f"{prefix}_{v.upper().replace('-', '_')}" for v in values}
    assert set(enum.values_by_name) == expected, enum.name
    assert enum.values_by_number[0].name == f"{prefix}_UNSPECIFIED", enum.name


def test_service_mirrors_rest_operations(compiled: Compiled) -> None:
    service = compiled.pool.FindServiceByName("kinemesh.v1.JobService")
    got = {m.name: (m.input_type.name, m.output_type.name, m.client_streaming, m.server_streaming)
           for m in service.methods}
    assert got == RPCS
    start = compiled.pool.FindMessageTypeByName("kinemesh.v1.CreateJobRequest")
    assert [f.name for f in start.oneofs_by_name["part"].fields] == ["start", "chunk"]
    first = start.fields_by_name["start"].message_type.fields_by_name
    assert {"options", "idempotency_key"} <= set(first)


def test_every_declaration_is_commented(compiled: Compiled) -> None:
    missing = []
    for f in compiled.files:
        comments = _comments(f)

        def need(path: tuple[int, ...], what: str, f=f, comments=comments) -> None:
            if not comments.get(path):
                missing.append(f"{f.name}: {what}")

        # Descriptor field numbers: message_type 4 (field 2), enum_type 5 (value 2),
        # service 6 (method 2).
        for i, m in enumerate(f.message_type):
            need((4, i), m.name)
            for j, fld in enumerate(m.field):
                need((4, i, 2, j), f"{m.name}.{fld.name}")
            assert not m.nested_type, "nested messages are not covered by this check"
        for i, e in enumerate(f.enum_type):
            need((5, i), e.name)
            for j, v in enumerate(e.value):
                need((5, i, 2, j), v.name)
        for i, s in enumerate(f.service):
            need((6, i), s.name)
            for j, meth in enumerate(s.method):
                need((6, i, 2, j), f"{s.name}.{meth.name}")
    assert not missing, f"uncommented: {missing}"
