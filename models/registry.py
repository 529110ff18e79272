"""Model registry: named presets -> (config, module) through one factory.

    @register_model("pose_tokenizer_small", PoseTokenizerConfig)
    def pose_tokenizer_small(config: PoseTokenizerConfig) -> PoseTokenizer: ...

    model = create_model("pose_tokenizer_small", num_tokens=16)

A preset function receives its config dataclass (defaults, then the caller's overrides applied
with `dataclasses.replace`) and returns an `nn.Module`. Unknown names and unknown override keys
raise immediately, listing what is known.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

# Modules whose import registers presets; imported lazily by the lookup functions so that
# `import kinemesh.models.registry` stays cheap and free of import cycles.
_PRESET_MODULES: tuple[str, ...] = ("kinemesh.models.tokenizer", "kinemesh.models.genhmr", "kinemesh.models.mqhmr",
                                     "kinemesh.models.backbone", "kinemesh.models.hands")


@dataclass(frozen=True)
class ModelEntry:
    name: str  # registry key
    config_cls: type  # the preset's config dataclass
    build: Callable[[Any], nn.Module]  # config -> module
    config_defaults: dict[str, Any]  # preset-specific field values applied before overrides


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, config_cls: type, **config_defaults: Any
) -> Callable[[Callable[[Any], nn.Module]], Callable[[Any], nn.Module]]:
    """Decorator registering `build(config) -> nn.Module` under `name`.

    `config_defaults` are field values for this preset (e.g. paper sizes); they are validated now.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    _check_fields(name, config_cls, config_defaults)

    def decorator(build: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, config_cls, build, dict(config_defaults))
        return build

    return decorator


def _check_fields(name: str, config_cls: type, values: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(
            f"{name}: unknown config field(s) {unknown}; {config_cls.__name__} has {sorted(known)}"
        )


def _load_presets() -> None:
    for module in _PRESET_MODULES:
        importlib.import_module(module)


def get_entry(name: str) -> ModelEntry:
    _load_presets()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(_REGISTRY)}") from None


def model_config(name: str, **overrides: Any) -> Any:
    """The config dataclass instance `create_model(name, **overrides)` would build from."""
    entry = get_entry(name)
    _check_fields(name, entry.config_cls, overrides)
    return dataclasses.replace(entry.config_cls(), **{**entry.config_defaults, **overrides})


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model `name`; keyword overrides replace config fields."""
    return get_entry(name).build(model_config(name, **overrides))


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    _load_presets()
    return sorted(_REGISTRY)
