"""Our checkpoints: the run's config written into them, read back safely, and the module rebuilt from them."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from xray_cls.errors import UserError
from xray_cls.module import ClassificationModule

# What a checkpoint decides about a run; paths, trainer and loggers come from where it is evaluated.
RESTORED_KEYS = ("data", "model", "loss", "monitor", "optimizer", "scheduler", "seed")
ZIP_SIGNATURE = b"PK\x03\x04"  # the first bytes of every zip archive


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary pickles."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist: give the path of a .ckpt file (or resume=<a run directory>)"
        )
    _check_zip_signature(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        first = str(err).split(". ")[0]  # torch goes on with advice about saving, not about this file
        raise UserError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {first}); is it truncated? Copy it "
            "again, or use another checkpoint of the run"
        ) from None
    if "config" not in checkpoint.get("xray_cls", {}) or "state_dict" not in checkpoint:
        raise UserError(f"checkpoint {path} was not written by xray_cls.train (it has no run config)")
    if "hyper_parameters" not in checkpoint:
        raise UserError(
            f"checkpoint {path} was written by an older xray_cls (its module has no hyperparameters): "
            "train it again with this version"
        )
    return checkpoint


def _check_zip_signature(path: Path) -> None:
    """torch.save writes a zip archive: anything else is another kind of file, not a damaged checkpoint."""
    with path.open("rb") as f:
        start = f.read(4)
    if start != ZIP_SIGNATURE:
        what = "an empty file" if not start else f"{path.stat().st_size} bytes starting with {start!r}"
        raise UserError(
            f"{path} is not a checkpoint ({what}; a checkpoint is the zip archive torch.save writes): give "
            "a .ckpt file from a run's checkpoints/ folder"
        )


def restore_config(
    cfg: DictConfig, checkpoint: dict[str, Any], overrides: Sequence[str], keys: Sequence[str] = RESTORED_KEYS
) -> DictConfig:
    """``cfg`` with the checkpoint's config under ``keys``, then the command line's overrides on top.

    The data are read where the run read them (its ``paths.data_dir``, as it resolves from the checkpoint's
    config), not from today's default folder, unless the command line names a folder (``paths...``)."""
    stored = OmegaConf.create(checkpoint["xray_cls"]["config"])
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    restored = cfg.copy()
    with open_dict(restored):
        for key in keys:
            if key in stored:
                restored[key] = stored[key]
        for override in parsed:
            key = override.key_or_group
            if key.split(".")[0] in keys:
                OmegaConf.update(restored, key, OmegaConf.select(cfg, key), merge=False)
        data_dir = OmegaConf.select(stored, "paths.data_dir")
        if data_dir is not None and not any(o.key_or_group.split(".")[0] == "paths" for o in parsed):
            restored.paths.data_dir = data_dir
    return restored


def module_from_checkpoint(checkpoint: dict[str, Any], calibrated: bool = True) -> ClassificationModule:
    """The trained module, rebuilt from the checkpoint's hyperparameters alone; with ``calibrated=False``
    (``eval.calibration=none``) its stored temperature is not applied."""
    hparams = copy.deepcopy(dict(checkpoint["hyper_parameters"]))
    # The checkpoint holds the weights: never download pretrained ones only to overwrite them.
    if "pretrained" in hparams["net"]:
        hparams["net"] |= {"pretrained": False, "weights_path": None}
    module = ClassificationModule(**hparams)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise UserError(
            f"checkpoint does not fit the model {hparams['net']['_target_']}: {str(err)[:500]}"
        ) from None
    if not calibrated:
        module.temperature.fill_(1.0)
    return module
