"""The allow-list, signature checks and building of `_target_` nodes."""

from __future__ import annotations

import functools

import pytest
import torch

from keel.core.errors import ConfigError
from keel.core.instantiate import check_node, instantiate, is_allowed, locate, validate


def test_allow_list() -> None:
    assert is_allowed("torch.optim.AdamW")
    assert is_allowed("keel.core.testing.BoringModule")
    for target in ("os.system", "builtins.eval", "subprocess.run", "torchx.x", "keelx.y"):
        assert not is_allowed(target)
        with pytest.raises(ConfigError, match="is not allowed"):
            locate(target)


def test_locate_reports_missing_things() -> None:
    with pytest.raises(ConfigError, match="did you mean 'torch.optim.AdamW'"):
        locate("torch.optim.AdamWW")
    with pytest.raises(ConfigError, match="cannot be imported"):
        locate("keel.not_a_package.Thing")
    assert locate("torch.nn.Linear") is torch.nn.Linear


def test_unknown_argument_with_suggestion() -> None:
    with pytest.raises(
        ConfigError, match=r"'model.hiden' is not an argument of keel.core.testing.BoringModule; did you mean 'hidden'"
    ):
        check_node("model", {"_target_": "keel.core.testing.BoringModule", "hiden": 3})


def test_missing_required_argument_unless_partial() -> None:
    with pytest.raises(ConfigError, match="missing the required argument 'in_features'"):
        check_node("net", {"_target_": "torch.nn.Linear", "out_features": 3})
    check_node("net", {"_target_": "torch.nn.Linear", "_partial_": True, "out_features": 3})


def test_scalar_types_checked_against_annotations() -> None:
    with pytest.raises(ConfigError, match=r"'model.hidden' must be int, got 'big'"):
        check_node("model", {"_target_": "keel.core.testing.BoringModule", "hidden": "big"})
    with pytest.raises(ConfigError, match=r"'model.dropout' must be float"):
        check_node("model", {"_target_": "keel.core.testing.BoringModule", "dropout": "0.1x"})
    check_node("model", {"_target_": "keel.core.testing.BoringModule", "dropout": 0})  # int is fine for float


def test_validate_walks_nested_nodes() -> None:
    cfg = {
        "model": {
            "_target_": "keel.core.testing.BoringModule",
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentom": 0.9},
        }
    }
    with pytest.raises(ConfigError, match=r"'model.optimizer.momentom'.*did you mean 'momentum'"):
        validate(cfg)
    cfg["model"]["optimizer"]["_target_"] = "os.system"
    with pytest.raises(ConfigError, match="not allowed"):
        validate(cfg)


def test_instantiate_builds_partials_and_nested_objects() -> None:
    module = instantiate(
        {
            "_target_": "keel.core.testing.BoringModule",
            "hidden": 8,
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5},
        }
    )
    assert module.embed.embedding_dim == 8
    assert isinstance(module.optimizer_factory, functools.partial)
    optimizer = module.optimizer_factory(module.parameters())
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.5
