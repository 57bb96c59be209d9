"""Where the Hydra configs live, and the resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

_PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT_DIR = _PACKAGE_DIR.parents[1]


def config_dir() -> Path:
    """The ``conf/`` directory: inside the installed wheel, or at the root of a source checkout."""
    for candidate in (_PACKAGE_DIR / "conf", _CHECKOUT_DIR / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"xray_cls configs not found in {_PACKAGE_DIR / 'conf'} or {_CHECKOUT_DIR / 'conf'}")


def project_root() -> Path:
    """Where ``data/`` and ``outputs/`` go: $XRAY_CLS_ROOT, else the source checkout, else the working dir."""
    if env := os.environ.get("XRAY_CLS_ROOT"):
        return Path(env).resolve()
    if (_CHECKOUT_DIR / "pyproject.toml").is_file() and (_CHECKOUT_DIR / "conf").is_dir():
        return _CHECKOUT_DIR
    return Path.cwd()


def packaged_dataset(filename: str) -> str:
    """A data set shipped inside the package (``xray_cls/datasets/``), so the default run needs no network."""
    return str(_PACKAGE_DIR / "datasets" / filename)


def _class_folders(path: str) -> list[str]:
    from xray_cls.data.image_folder import class_folders

    return class_folders(path)


def register_resolvers() -> None:
    resolvers = {
        "len": len,
        "coalesce": lambda *values: next((v for v in values if v is not None), None),
        "choose": lambda condition, if_true, if_false: if_true if condition else if_false,
        "if_binary": lambda class_names, binary, multiclass: binary if len(class_names) == 2 else multiclass,
        "project_root": lambda: str(project_root()),
        "class_folders": _class_folders,
        "packaged": packaged_dataset,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
