"""Model registry: presets build, overrides apply, unknown names and fields raise."""

from __future__ import annotations

import pytest
from torch import nn

from kinemesh.models import registry
from kinemesh.models.registry import create_model, list_models, model_config, register_model
from kinemesh.models.tokenizer import PoseTokenizer, PoseTokenizerConfig


def test_tokenizer_presets_listed() -> None:
    names = list_models()
    assert {"pose_tokenizer_small", "pose_tokenizer_paper"} <= set(names)
    assert names == sorted(names)


def test_preset_sizes() -> None:
    small = model_config("pose_tokenizer_small")
    paper = model_config("pose_tokenizer_paper")
    assert (small.num_tokens, small.codebook_size, small.code_dim) == (32, 512, 64)
    assert (paper.num_tokens, paper.codebook_size, paper.code_dim) == (160, 2048, 256)


def test_create_with_overrides() -> None:
    model = create_model("pose_tokenizer_small", num_tokens=8, codebook_size=16)
    assert isinstance(model, PoseTokenizer)
    assert model.cfg.num_tokens == 8 and model.codebook.shape == (16, model.cfg.code_dim)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(KeyError, match="pose_tokenizer_small"):
        create_model("no_such_model")


def test_unknown_override_raises() -> None:
    with pytest.raises(TypeError, match="no_such_field"):
        create_model("pose_tokenizer_small", no_such_field=1)


def test_duplicate_registration_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the real one clean

    @register_model("_test_dup", PoseTokenizerConfig)
    def first(cfg: PoseTokenizerConfig) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):

        @register_model("_test_dup", PoseTokenizerConfig)
        def second(cfg: PoseTokenizerConfig) -> nn.Module:
            return nn.Identity()
