"""Every option of every config group composes, resolves and (where this machine can) instantiates."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.xray_fixtures import write_image_folder
from xray_cls.config import config_dir


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml") if not p.stem.startswith("_"))


GROUPS = ["data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "debug", "experiment"]
GROUPS += ["hparams_search", "cv"]
CASES = [(group, option) for group in GROUPS for option in _options(group)]


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert _options(group), f"config group {group} is empty"


@pytest.fixture
def option_overrides(tmp_path):
    """Options that need a value the user must give (an image folder's path)."""
    write_image_folder(tmp_path / "folder", {"cats": 2, "dogs": 2})
    return {"image_folder": [f"data.source.path={tmp_path / 'folder'}"]}


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_resolves(make_cfg, option_overrides, group: str, option: str) -> None:
    cfg = make_cfg(f"{group}={option}", *option_overrides.get(option, []))
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["model"]["net"]["num_classes"] == len(container["data"]["class_names"])
    assert container["model"]["net"]["in_channels"] == container["data"]["num_channels"]
    if group == "optimizer":
        assert callable(instantiate(container["optimizer"]))
        assert container["model"]["optimizer"] == container["optimizer"]  # the module's own optimizer


@pytest.mark.parametrize("option", _options("data"))
def test_data_options_instantiate(make_cfg, option_overrides, option: str) -> None:
    datamodule = instantiate(make_cfg(f"data={option}", *option_overrides.get(option, [])).data)
    assert datamodule.class_names


def test_unknown_option_is_hydras_error(make_cfg) -> None:
    with pytest.raises(ConfigCompositionException, match="model"):
        make_cfg("model=no_such_model")


def test_configs_ship_inside_the_package_or_checkout() -> None:
    assert (config_dir() / "train.yaml").is_file()
    assert (config_dir() / "eval.yaml").is_file()
