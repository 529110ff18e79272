"""ONNX export of the tokenizer graphs (checker, dynamic batch, ORT parity) and Triton configs."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from kinemesh.models.export import (
    ExportError,
    TensorSpec,
    export_graph,
    parse_pbtxt,
    tensor_specs_from_onnx,
    write_triton_config,
)
from kinemesh.models.registry import create_model
from kinemesh.models.tokenizer import (
    PoseTokenizer,
    TokenizerEmbeddingDecoderGraph,
    TokenizerEncoderGraph,
    TokenizerIndexDecoderGraph,
)

pytestmark = pytest.mark.slow  # a few seconds per export on CPU


@pytest.fixture(scope="module")
def tokenizer() -> PoseTokenizer:
    torch.manual_seed(0)
    return create_model("pose_tokenizer_small").eval()


def _graphs(tok: PoseTokenizer) -> dict[str, tuple[nn.Module, dict[str, torch.Tensor], list[str]]]:
    cfg = tok.cfg
    return {
        "tokenizer_decode_indices": (
            TokenizerIndexDecoderGraph(tok),
            {"indices": torch.randint(0, cfg.codebook_size, (3, cfg.num_tokens))},
            ["rot6d"],
        ),
        "tokenizer_decode_embeddings": (
            TokenizerEmbeddingDecoderGraph(tok),
            {"embeddings": torch.randn(3, cfg.num_tokens, cfg.code_dim)},
            ["rot6d"],
        ),
        "tokenizer_encode": (
            TokenizerEncoderGraph(tok),
            {"rot6d": torch.randn(3, cfg.joints, cfg.rot_dim)},
            ["indices", "z_e"],
        ),
    }


@pytest.mark.parametrize(
    "graph", ["tokenizer_decode_indices", "tokenizer_decode_embeddings", "tokenizer_encode"]
)
def test_tokenizer_graph_exports_with_parity(graph: str, tokenizer: PoseTokenizer, tmp_path: Path) -> None:
    module, example, outputs = _graphs(tokenizer)[graph]
    path = tmp_path / graph / "1" / "model.onnx"
    report = export_graph(
        module, example, outputs, path, int_ranges={"indices": (0, tokenizer.cfg.codebook_size)}
    )
    print(f"\n{graph}: exporter={report.exporter} opset={report.opset} max_abs_diff={report.max_abs_diff}")
    assert report.checker_ok and report.opset >= 17
    assert report.batch_sizes == (1, 5)
    assert set(report.max_abs_diff) == set(outputs)
    assert all(d <= 1e-4 for d in report.max_abs_diff.values())

    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == list(example)
    assert [o.name for o in model.graph.output] == outputs
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis

    inputs, outs = tensor_specs_from_onnx(path)
    cfg_path = write_triton_config(path.parent.parent, graph, inputs, outs, max_batch_size=64)
    cfg = parse_pbtxt(cfg_path.read_text())
    assert cfg["name"] == graph and cfg["backend"] == "onnxruntime" and cfg["max_batch_size"] == 64
    assert [i["name"] for i in cfg["input"]] == list(example)
    assert [o["name"] for o in cfg["output"]] == outputs
    for spec in cfg["input"] + cfg["output"]:
        ex = example.get(spec["name"])
        if ex is not None:  # dims exclude the batch axis
            assert spec["dims"] == list(ex.shape[1:])
            assert spec["data_type"] == ("TYPE_INT64" if ex.dtype == torch.int64 else "TYPE_FP32")


def test_output_name_count_must_match(tokenizer: PoseTokenizer, tmp_path: Path) -> None:
    module, example, _ = _graphs(tokenizer)["tokenizer_encode"]
    with pytest.raises(ExportError, match="2 tensors"):
        export_graph(module, example, ["indices"], tmp_path / "x.onnx")


def test_torchscript_exporter_also_passes(tokenizer: PoseTokenizer, tmp_path: Path) -> None:
    module, example, outputs = _graphs(tokenizer)["tokenizer_decode_embeddings"]
    report = export_graph(module, example, outputs, tmp_path / "ts.onnx", exporter="torchscript")
    assert report.exporter == "torchscript" and report.max_abs_diff["rot6d"] <= 1e-4


# -- Triton config --------------------------------------------------------------------------------

# Field names and types copied from Triton's ModelConfig (model_config.proto); only the subset the
# writer emits, so protobuf's own text-format parser checks the syntax and the enum names.
_MODEL_CONFIG_SUBSET = """
syntax = "proto3";
package kinemesh_test;
enum DataType { TYPE_INVALID = 0; TYPE_BOOL = 1; TYPE_UINT8 = 2; TYPE_UINT16 = 3; TYPE_UINT32 = 4;
  TYPE_UINT64 = 5; TYPE_INT8 = 6; TYPE_INT16 = 7; TYPE_INT32 = 8; TYPE_INT64 = 9; TYPE_FP16 = 10;
  TYPE_FP32 = 11; TYPE_FP64 = 12; TYPE_STRING = 13; TYPE_BF16 = 14; }
message ModelInstanceGroup {
  enum Kind { KIND_AUTO = 0; KIND_GPU = 1; KIND_CPU = 2; KIND_MODEL = 3; }
  string name = 1; Kind kind = 4; int32 count = 2; repeated int32 gpus = 3;
}
message ModelInput { string name = 1; DataType data_type = 2; repeated int64 dims = 4; }
message ModelOutput { string name = 1; DataType data_type = 2; repeated int64 dims = 3; }
message ModelDynamicBatching {
  repeated int32 preferred_batch_size = 1; uint64 max_queue_delay_microseconds = 2;
}
message ModelConfig {
  string name = 1; string platform = 2; string backend = 17; int32 max_batch_size = 4;
  repeated ModelInput input = 5; repeated ModelOutput output = 6;
  repeated ModelInstanceGroup instance_group = 7; string default_model_filename = 8;
  ModelDynamicBatching dynamic_batching = 11;
}
"""


def _model_config_message(tmp_path: Path) -> type:
    import grpc_tools
    from grpc_tools import protoc

    (tmp_path / "kinemesh_test_model_config.proto").write_text(_MODEL_CONFIG_SUBSET)
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{tmp_path}",
            f"-I{include}",
            f"--python_out={tmp_path}",
            "kinemesh_test_model_config.proto",
        ]
    )
    assert rc == 0
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module("kinemesh_test_model_config_pb2").ModelConfig
    finally:
        sys.path.remove(str(tmp_path))


def test_triton_config_is_valid_text_format(tmp_path: Path) -> None:
    from google.protobuf import text_format

    path = write_triton_config(
        tmp_path / "pose_tokenizer",
        "pose_tokenizer",
        [TensorSpec("indices", "int64", (32,))],
        [("rot6d", "float32", (22, 6)), ("mask", "torch.bool", (-1,))],
        max_batch_size=128,
        preferred_batch_sizes=(32, 64),
        max_queue_delay_microseconds=500,
    )
    assert path == tmp_path / "pose_tokenizer" / "config.pbtxt"
    msg = text_format.Parse(path.read_text(), _model_config_message(tmp_path)())
    assert (
        msg.name == "pose_tokenizer" and msg.platform == "onnxruntime_onnx" and msg.backend == "onnxruntime"
    )
    assert msg.max_batch_size == 128
    assert list(msg.input[0].dims) == [32] and msg.input[0].data_type == 9  # TYPE_INT64
    assert list(msg.output[0].dims) == [22, 6] and msg.output[0].data_type == 11  # TYPE_FP32
    assert list(msg.output[1].dims) == [-1] and msg.output[1].data_type == 1  # TYPE_BOOL
    assert list(msg.dynamic_batching.preferred_batch_size) == [32, 64]
    assert msg.dynamic_batching.max_queue_delay_microseconds == 500
    assert len(msg.instance_group) == 1 and msg.instance_group[0].kind == 1  # KIND_GPU
    # the module's own reader agrees
    parsed = parse_pbtxt(path.read_text())
    assert parsed["dynamic_batching"] == {
        "preferred_batch_size": [32, 64],
        "max_queue_delay_microseconds": 500,
    }
    assert parsed["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]


def test_triton_config_rejects_bad_values(tmp_path: Path) -> None:
    spec = [TensorSpec("x", "float32", (4,))]
    with pytest.raises(ValueError, match="max_batch_size"):
        write_triton_config(tmp_path / "m", "m", spec, spec, max_batch_size=0)
    with pytest.raises(ValueError, match="Triton type"):
        write_triton_config(tmp_path / "m", "m", [TensorSpec("x", "complex64", (4,))], spec, max_batch_size=4)
    with pytest.raises(ValueError, match="preferred"):
        write_triton_config(tmp_path / "m", "m", spec, spec, max_batch_size=4, preferred_batch_sizes=(8,))
    no_batching = parse_pbtxt(
        (
            write_triton_config(tmp_path / "m", "m", spec, spec, max_batch_size=0, dynamic_batching=False)
        ).read_text()
    )
    assert "dynamic_batching" not in no_batching and no_batching["max_batch_size"] == 0


def test_parse_pbtxt_syntax() -> None:
    text = 'a: 1  # comment\nb { c: "x\\"y" d: [1, 2] }\nb { c: "z" }\ne: KIND_CPU\nf: -1.5\ng: true\n'
    assert parse_pbtxt(text) == {
        "a": 1,
        "b": [{"c": 'x"y', "d": [1, 2]}, {"c": "z"}],
        "e": "KIND_CPU",
        "f": -1.5,
        "g": True,
    }
    with pytest.raises(ValueError):
        parse_pbtxt("a { b: 1")
