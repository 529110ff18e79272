"""Operator checkpoints: safetensors and PyTorch files, wrappers and prefixes, the ViT layout of timm /
ViTPose / HMR2.0, and the errors for a tensor of the wrong shape, missing tensors and unreadable files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kinemesh.models.export.checkpoints import CheckpointError, load_checkpoint, read_checkpoint
from kinemesh.models.registry import create_model


def _pair() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    source = create_model("mqhmr_small").eval()
    with torch.no_grad():  # weights that differ from a fresh model's everywhere, heads included
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch.manual_seed(1)
    return source, create_model("mqhmr_small").eval(), torch.randn(2, 3, 256, 192)


def _same(a: torch.nn.Module, b: torch.nn.Module, image: torch.Tensor) -> bool:
    with torch.no_grad():
        return all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a(image), b(image), strict=True))


def test_safetensors_round_trip(tmp_path: Path) -> None:
    source, target, image = _pair()
    assert not _same(source, target, image)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "mqhmr.safetensors"))
    load_checkpoint(target, read_checkpoint(tmp_path / "mqhmr.safetensors"))
    assert _same(source, target, image)


def test_pytorch_file_with_a_wrapper_and_prefix(tmp_path: Path) -> None:
    source, target, image = _pair()
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}},
               tmp_path / "last.ckpt")  # a Lightning-style checkpoint
    load_checkpoint(target, read_checkpoint(tmp_path / "last.ckpt"))
    assert _same(source, target, image)


def _in_vit_layout(state: dict[str, torch.Tensor], prefix: str, depth: int, last_norm: str) -> dict[str, torch.Tensor]:
    """Our ViT's tensors under `prefix` written as timm / ViTPose / HMR2.0 name them (fused qkv, proj,
    fc1/fc2, `last_norm` for the final norm, a class token and its position slot); the rest as is."""
    theirs = {k: v for k, v in state.items() if prefix and not k.startswith(prefix)}  # the rest of the model
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        for kind in ("weight", "bias"):
            theirs[f"{b}attn.qkv.{kind}"] = torch.cat([state[f"{b}attn.{x}.{kind}"] for x in "qkv"])
            theirs[f"{b}attn.proj.{kind}"] = state[f"{b}attn.out.{kind}"]
            theirs[f"{b}mlp.fc1.{kind}"] = state[f"{b}mlp.0.{kind}"]
            theirs[f"{b}mlp.fc2.{kind}"] = state[f"{b}mlp.2.{kind}"]
            for n in ("norm1", "norm2"):
                theirs[f"{b}{n}.{kind}"] = state[f"{b}{n}.{kind}"]
    for kind in ("weight", "bias"):
        theirs[f"{prefix}patch_embed.proj.{kind}"] = state[f"{prefix}patch_embed.{kind}"]
        theirs[f"{prefix}{last_norm}.{kind}"] = state[f"{prefix}norm.{kind}"]
    pos = state[f"{prefix}pos_embed"]
    theirs[f"{prefix}pos_embed"] = torch.cat([torch.randn(1, 1, pos.shape[2]), pos], 1)  # class-token slot first
    theirs[f"{prefix}cls_token"] = torch.randn(1, 1, pos.shape[2])
    return theirs


def test_vit_layout_of_timm_vitpose_hmr2(tmp_path: Path) -> None:
    """A backbone saved as HMR2.0 does (under `backbone.`, with last_norm)."""
    source, target, image = _pair()
    theirs = _in_vit_layout(source.state_dict(), "backbone.", len(source.backbone.blocks), "last_norm")
    torch.save(theirs, tmp_path / "hmr2_style.pt")
    load_checkpoint(target, read_checkpoint(tmp_path / "hmr2_style.pt"))
    assert _same(source, target, image)


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(tmp_path: Path) -> None:
    source, target, _ = _pair()
    state = dict(source.state_dict())
    state["shape_head.weight"] = torch.zeros(10, state["shape_head.weight"].shape[1])  # an SMPL-sized shape head
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"'shape_head.weight' has shape \(10, 128\) in the checkpoint but "
                                              r"\(32, 128\) in MQHMR"):
        load_checkpoint(target, read_checkpoint(tmp_path / "bad.safetensors"), name="bad.safetensors")


def test_missing_and_unexpected_tensors_are_listed() -> None:
    source, target, _ = _pair()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layers.1.")}
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"missing \d+ tensor\(s\): layers\.1\..*1 unexpected: extra\.weight"):
        load_checkpoint(target, state)


@pytest.mark.parametrize("name,content", [("x.safetensors", b"not a safetensors file"), ("x.pt", b"\x80junk"),
                                          ("x.txt", b"hello")])
def test_unreadable_files_get_a_typed_error(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        read_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_a_timm_vit_loads_into_the_backbone_graph() -> None:
    """The image-conditioned GenHMR's backbone (no prefix) from a timm-style ViT (no prefix either)."""
    torch.manual_seed(0)
    source = create_model("vit_small_256x192").eval()
    theirs = _in_vit_layout(source.state_dict(), "", len(source.blocks), "norm")
    torch.manual_seed(1)
    target = load_checkpoint(create_model("vit_small_256x192").eval(), theirs)
    image = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        assert torch.allclose(target(image), source(image), atol=1e-6)
