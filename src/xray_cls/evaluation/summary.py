"""The facts at the top of a report (and in metrics.json): what was evaluated on which data, and how the
threshold was chosen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig


@dataclass
class Summary:
    """The facts at the top of the report, also written into metrics.json."""

    data: str
    model: str
    checkpoint: str
    test_samples: int
    class_counts: dict[str, int]
    threshold: float | None  # binary tasks only
    positive_class: str | None
    threshold_how: str | None
    temperature: float  # the logits' divisor, fitted on validation data (1: not calibrated)
    tta: str
    # The data module's splits: images per class (train, val, test), and how patients were kept apart.
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    patients: str | None = None
    card: dict[str, Any] = field(default_factory=dict)  # data.card: source, population, limitations


def summarize(
    cfg: DictConfig,
    module: Any,
    targets: torch.Tensor,
    checkpoint: str,
    threshold_how: str,
    tta: str = "off",
    datamodule: Any = None,
) -> Summary:
    """The report's header facts for ``module`` (a ClassificationModule) tested on ``targets``; the data facts
    of the model card from ``datamodule`` (a ClassificationDataModule after setup)."""
    names = list(module.class_names)
    positive = module.positive_index
    binary = positive is not None
    splits = getattr(datamodule, "splits", None) or {}
    return Summary(
        data=describe_data(cfg),
        model=describe_model(module.hparams["net"]),
        checkpoint=str(Path(checkpoint).resolve())
        if checkpoint
        else "none (the weights at the end of training)",
        test_samples=len(targets),
        class_counts={name: int((targets == c).sum()) for c, name in enumerate(names)},
        threshold=float(module.threshold) if binary else None,
        positive_class=names[positive] if binary else None,
        threshold_how=threshold_how if binary else None,
        temperature=float(module.temperature),
        tta=tta,
        splits={
            name: {n: int((splits[name].labels == c).sum()) for c, n in enumerate(names)}
            for name in _SPLITS
            if name in splits
        },
        patients=describe_patients(splits, getattr(datamodule, "val_fraction", None), _fold(datamodule)),
        card=_plain_card(getattr(datamodule, "card", None) or {}),
    )


_SPLITS = ("train", "val", "test")


def _fold(datamodule: Any) -> str | None:
    """k-fold cross-validation (data.folds): which fold is the validation split, e.g. "fold 0 of 5"."""
    folds = getattr(datamodule, "folds", None)
    return None if folds is None else f"fold {datamodule.fold} of {folds}"


def describe_patients(
    splits: Mapping[str, Any], val_fraction: float | None, fold: str | None = None
) -> str | None:
    """How the splits keep patients apart, from the data module's SplitViews; ``fold`` names the validation
    fold of a k-fold run instead of ``val_fraction``."""
    if not {"train", "val"} <= set(splits):
        return None
    known = splits["train"].split.groups is not None
    carved = splits["val"].split is splits["train"].split  # val held out of the training pool
    share = fold or ("part" if val_fraction is None else f"{val_fraction:g}")
    if known and carved:
        return (
            f"Patient identifiers known: validation ({share} of the training pool, stratified) was "
            "held out by patient, so no patient is in both; test is the data set's own split."
        )
    if known:
        return "Patient identifiers known; validation and test are the data set's own splits."
    if carved:
        held = f"{fold} (stratified)" if fold else f"a stratified random {share}"
        return (
            f"No patient identifiers: validation is {held} of the training images, so one patient's images "
            "may be in both."
        )
    return "No patient identifiers: the data set's own train, validation and test splits are used as given."


def _plain_card(card: Mapping[str, Any]) -> dict[str, Any]:
    """data.card as plain strings and lists (it arrives as a DictConfig), for metrics.json."""
    plain: dict[str, Any] = {}
    for key, value in card.items():
        if value is None or isinstance(value, str):
            plain[str(key)] = value
        else:
            plain[str(key)] = [str(item) for item in value]
    return plain


def stored_threshold_how(chosen: Mapping[str, Any] | None, when: str) -> str:
    """How the threshold in a checkpoint was chosen (the OperatingPoint callback's record of it)."""
    if chosen is None:
        return "Not chosen on validation data: the checkpoint records no operating point (0.5 by default)."
    return (
        f"Chosen on the validation split ({chosen['validation_samples']} images) at epoch {chosen['epoch']} "
        f"of training: {chosen['description']}. {when}"
    )


def describe_data(cfg: DictConfig) -> str:
    source = cfg.data.source
    name = source.get("dataset") or source._target_.rsplit(".", 1)[-1].removesuffix("Source")
    size = cfg.data.image_size
    return f"{name} ({cfg.data.num_channels}x{size}x{size}, classes {', '.join(cfg.data.class_names)})"


def describe_model(net: Mapping[str, Any]) -> str:
    """``ModernCNN``, ``TorchvisionBackbone resnet18``, ``TimmBackbone convnext_nano``: the network's class,
    and its architecture (or timm name, or torchxrayvision weights) if named."""
    name = net["_target_"].rsplit(".", 1)[-1]
    detail = next((net[key] for key in ("arch", "name", "weights") if net.get(key)), None)
    return f"{name} {detail}" if detail else name
