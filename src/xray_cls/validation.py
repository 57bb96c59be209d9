"""Refuse configs that cannot work, before any data is loaded: one line naming the key and what is allowed.

Every rule lives in the table below; a check that needs the built network (its smallest input) is in
:func:`check_image_size`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from xray_cls.errors import UserError

if TYPE_CHECKING:
    from xray_cls.models.classifier import Classifier

# The commands check a config with these rules before they import torch and Lightning (seconds), so this
# module imports neither; the modules that act on these choices import the tuples from here.
BALANCE_MODES = ("none", "loss_weights", "sampler")  # data.balance
FINETUNE_STRATEGIES = ("full", "linear_probe", "gradual")  # model.finetune.mode
THRESHOLD_METHODS = ("youden", "target_sensitivity", "fixed")  # eval.threshold

_MISSING = object()


@dataclass(frozen=True)
class Rule:
    key: str
    ok: Callable[[Any, DictConfig], bool]
    allowed: str


def _number(test: Callable[[float], bool]) -> Callable[[Any, DictConfig], bool]:
    return lambda v, _: isinstance(v, int | float) and not isinstance(v, bool) and test(v)


def _whole(v: Any, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _fold_ok(fold: Any, folds: Any) -> bool:
    """k-fold: both null, or ``fold`` one of ``folds`` (checked by its own rule)."""
    if folds is None:
        return fold is None
    return _whole(fold, 0) and _whole(folds, 2) and fold < folds


RULES = [
    Rule("seed", lambda v, _: _whole(v, 0) and v < 2**32, "a whole number from 0 to 2**32 - 1"),
    Rule(
        "data.class_names",
        lambda v, _: len(v) >= 2,
        "two or more classes (data=image_folder: one folder per class, at least two folders)",
    ),
    Rule("optimizer.lr", _number(lambda v: v > 0), "a number > 0"),
    Rule("data.batch_size", _number(lambda v: v >= 1 and v == int(v)), "a whole number >= 1"),
    Rule("data.num_workers", _number(lambda v: v >= 0 and v == int(v)), "a whole number >= 0"),
    Rule("data.val_fraction", _number(lambda v: 0 < v < 1), "a fraction in (0, 1)"),
    Rule("data.folds", lambda v, _: v is None or _whole(v, 2), "null or a whole number >= 2"),
    Rule(
        "data.fold",
        lambda v, cfg: _fold_ok(v, cfg.data.get("folds")),
        "null, or with data.folds set: 0 to folds-1",
    ),
    Rule("data.image_size", _number(lambda v: v >= 1 and v == int(v)), "a whole number of pixels >= 1"),
    Rule("data.num_channels", lambda v, _: v in (1, 3), "1 or 3"),
    Rule("data.balance", lambda v, _: v in BALANCE_MODES, " | ".join(BALANCE_MODES)),
    Rule("data.on_device", lambda v, _: v in ("auto", True, False), "auto | true | false"),
    Rule(
        "data.positive_class",
        lambda v, cfg: v is None or v in list(cfg.data.class_names),
        "null or one of data.class_names",
    ),
    Rule("model.finetune.mode", lambda v, _: v in FINETUNE_STRATEGIES, " | ".join(FINETUNE_STRATEGIES)),
    Rule("model.finetune.unfreeze_at_epoch", lambda v, _: _whole(v, 0), "a whole number >= 0"),
    Rule(
        "model.finetune.backbone_lr_mult",
        _number(lambda v: v > 0),
        "a number > 0 (to keep the backbone fixed: model.finetune.mode=linear_probe)",
    ),
    Rule("model.net.adapt_input", lambda v, _: v in ("sum", "repeat"), "sum | repeat"),
    Rule("trainer.max_epochs", _number(lambda v: v >= 1 or v == -1), "a whole number >= 1 (or -1: no limit)"),
    Rule("loss.label_smoothing", _number(lambda v: 0 <= v < 1), "a number in [0, 1)"),
    Rule(
        "eval.threshold",
        lambda v, cfg: v in THRESHOLD_METHODS or (v == "stored" and cfg.task_name != "train"),
        f"{' | '.join(THRESHOLD_METHODS)} (eval also: stored, the checkpoint's own)",
    ),
    Rule("eval.calibration", lambda v, _: v in ("temperature", "none"), "temperature | none"),
    Rule("eval.target_sensitivity", _number(lambda v: 0 < v <= 1), "a fraction in (0, 1]"),
    Rule("eval.fixed_threshold", _number(lambda v: 0 <= v <= 1), "a probability in [0, 1]"),
    Rule(
        "eval.bootstrap.resamples", _number(lambda v: v >= 0 and v == int(v)), "a whole number >= 0 (0: off)"
    ),
    Rule("eval.bootstrap.confidence", _number(lambda v: 0 < v < 1), "a fraction in (0, 1)"),
    Rule("export.tolerance", _number(lambda v: v >= 0), "a number >= 0"),
    Rule("export.check_images", _number(lambda v: v >= 0 and v == int(v)), "a whole number >= 0 (0: none)"),
    Rule("on_nonfinite_loss", lambda v, _: v in ("stop", "skip"), "stop | skip"),
    Rule("monitor.mode", lambda v, _: v in ("min", "max"), "min | max"),
]


# What a model config leaves for the command line (`???`), and what to give there.
REQUIRED = {"model.net.name": "a timm model name, e.g. convnext_nano (timm.list_models() lists them)"}


def validate(cfg: DictConfig) -> None:
    """Raise :class:`UserError` for the first value that cannot work."""
    net = OmegaConf.select(cfg, "model.net")
    for key in net if isinstance(net, DictConfig) else ():
        if OmegaConf.is_missing(net, key):
            required = REQUIRED.get(f"model.net.{key}", "a value, on the command line or in the model config")
            raise UserError(f"invalid config: model.net.{key}=???; allowed: {required}")
    for rule in RULES:
        value = OmegaConf.select(cfg, rule.key, default=_MISSING)
        if value is not _MISSING and not rule.ok(value, cfg):
            raise UserError(f"invalid config: {rule.key}={value!r}; allowed: {rule.allowed}")
    _check_accelerator(str(OmegaConf.select(cfg, "trainer.accelerator", default="auto")))


def _check_accelerator(accelerator: str) -> None:
    if accelerator not in ("gpu", "cuda", "mps"):
        return  # auto and cpu always work; torch (seconds to import) is needed only to ask about devices
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"invalid config: trainer.accelerator={accelerator} but this machine has no CUDA GPU; "
            "allowed here: trainer=cpu or trainer=auto"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserError(
            "invalid config: trainer.accelerator=mps but MPS is not available; allowed: trainer=cpu"
        )


def check_image_size(net: Classifier, image_size: int) -> None:
    """The input sizes a network declares it accepts (scratch CNNs also check themselves when built)."""
    check_size_limits(image_size, net.fixed_image_size, net.min_image_size)


def check_size_limits(image_size: int, fixed: int | None, smallest: int | None) -> None:
    """``data.image_size`` against the only size a model takes (``fixed``) or the smallest one."""
    if fixed is not None and image_size != fixed:
        raise UserError(
            f"invalid config: data.image_size={image_size}; allowed for this model: exactly {fixed}"
        )
    if smallest is not None and image_size < smallest:
        raise UserError(
            f"invalid config: data.image_size={image_size}; allowed for this model: >= {smallest}"
        )
