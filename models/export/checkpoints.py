"""Operator checkpoints: read safetensors or PyTorch state dicts and load them into the project's
architectures through a documented name mapping, refusing anything whose shapes do not fit.

    state = read_checkpoint("weights/mqhmr.safetensors")
    load_checkpoint(model, state)            # CheckpointError names the first tensor that does not fit

Accepted files: `.safetensors`, or a PyTorch file (`.pt`, `.pth`, `.ckpt`, `.bin`) holding a state dict,
possibly under a "state_dict", "model" or "module" entry and with "model." / "module." prefixes (a
Lightning or DataParallel checkpoint); read with `weights_only=True`, so a pickle cannot run code.

Names: a checkpoint may use the project's own names (`model.state_dict()` of the architecture) or,
for the ViT backbone, the layout shared by timm, ViTPose and HMR2.0 (`vit_layout`):

| checkpoint name (ViT layout)          | project name                                  |
|---------------------------------------|-----------------------------------------------|
| `patch_embed.proj.{weight,bias}`      | `patch_embed.{weight,bias}`                   |
| `pos_embed` (1, 1 + h*w, C)           | `pos_embed` (1, h*w, C): the class-token slot is dropped |
| `blocks.i.attn.qkv.{weight,bias}`     | `blocks.i.attn.{q,k,v}.{weight,bias}` (split in three) |
| `blocks.i.attn.proj.*`                | `blocks.i.attn.out.*`                         |
| `blocks.i.mlp.fc1.*`, `mlp.fc2.*`     | `blocks.i.mlp.0.*`, `blocks.i.mlp.2.*`        |
| `norm.*` or `last_norm.*`             | `norm.*`                                      |
| `cls_token`                           | (dropped: the heads read the patch tokens)    |

each under the checkpoint's own prefix for the backbone (`backbone.` in HMR2.0's; none in timm's),
which is put under the architecture's (`backbone.` in MQ-HMR).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

PYTORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_WRAPPERS = ("state_dict", "model", "module")
_BLOCK = re.compile(r"^(?P<prefix>.*?)blocks\.(?P<i>\d+)\.(?P<rest>.+)$")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the architecture (names or shapes)."""


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A checkpoint file -> {name: tensor}, wrappers and "model." / "module." prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        elif path.suffix in PYTORCH_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{path.name}: not a checkpoint (.safetensors or {', '.join(PYTORCH_SUFFIXES)})")
    except CheckpointError:
        raise
    except Exception as exc:  # a corrupt or foreign file: say which, not a library's traceback
        raise CheckpointError(f"{path.name} could not be read as a checkpoint: {type(exc).__name__}: {exc}") from None
    while isinstance(state, Mapping) and not any(isinstance(v, Tensor) for v in state.values()):
        inner = next((state[k] for k in _WRAPPERS if k in state and isinstance(state[k], Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path.name} holds no state dict")
    out = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    for prefix in ("module.", "model."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def vit_layout(state: Mapping[str, Tensor], target_prefix: str = "backbone.") -> dict[str, Tensor]:
    """Rename a ViT in the timm / ViTPose / HMR2.0 layout (see the module's table) to the project's
    names under `target_prefix`; every other entry is left as it is. Recognised by its fused
    `blocks.<i>.attn.qkv.weight`; a state dict without one is returned unchanged."""
    qkv = [k for k in state if _BLOCK.match(k) and k.endswith("attn.qkv.weight")]
    if not qkv:
        return dict(state)
    source = _BLOCK.match(qkv[0]).group("prefix")  # e.g. "backbone." (HMR2.0) or "" (timm)
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        if not name.startswith(source):
            out[name] = t
            continue
        rest = name[len(source):]
        m = _BLOCK.match(rest)
        if m:
            block, part = f"{target_prefix}blocks.{m.group('i')}.", m.group("rest")
            if part.startswith("attn.qkv."):
                kind = part.rsplit(".", 1)[1]  # weight or bias
                for letter, chunk in zip("qkv", t.chunk(3, dim=0), strict=True):
                    out[f"{block}attn.{letter}.{kind}"] = chunk.clone()
                continue
            part = (part.replace("attn.proj.", "attn.out.").replace("mlp.fc1.", "mlp.0.")
                    .replace("mlp.fc2.", "mlp.2."))
            out[block + part] = t
        elif rest.startswith("patch_embed.proj."):
            out[target_prefix + "patch_embed." + rest.removeprefix("patch_embed.proj.")] = t
        elif rest.startswith(("norm.", "last_norm.")):
            out[target_prefix + "norm." + rest.split(".", 1)[1]] = t
        elif rest == "pos_embed":
            out[target_prefix + "pos_embed"] = t
        elif rest == "cls_token":
            continue
        else:
            out[name] = t
    return out


def load_checkpoint(model: nn.Module, state: Mapping[str, Tensor], *, name: str = "checkpoint") -> nn.Module:
    """Load `state` (project names, or a ViT in the timm / ViTPose / HMR2.0 layout) into `model`:
    every tensor the model has must be there with the model's shape (a ViT layout's position
    embeddings with a class-token slot fit). Raises CheckpointError naming the first tensor whose
    shape differs (with both shapes), or the missing and unexpected names. Returns the model."""
    own = model.state_dict()
    if "backbone.patch_embed.weight" in own:  # a model with a ViT inside (MQ-HMR)
        mapped = vit_layout(state, "backbone.")
    elif "patch_embed.weight" in own:  # the ViT itself (the image-conditioned GenHMR's backbone graph)
        mapped = vit_layout(state, "")
    else:
        mapped = dict(state)
    for key, t in list(mapped.items()):
        if key.endswith("pos_embed") and key in own and t.dim() == 3 and t.shape[1] == own[key].shape[1] + 1:
            mapped[key] = t[:, 1:]  # the class token's position (timm / ViTPose layout)
    for key, t in mapped.items():
        if key in own and tuple(t.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{name}: tensor {key!r} has shape {tuple(t.shape)} in the checkpoint but "
                                  f"{tuple(own[key].shape)} in {type(model).__name__}")
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        def few(names: list[str]) -> str:
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        parts = ([f"missing {len(missing)} tensor(s): {few(missing)}"] if missing else []) + (
            [f"{len(unexpected)} unexpected: {few(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{name} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()})
    return model
