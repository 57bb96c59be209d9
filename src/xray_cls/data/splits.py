"""Holding out a stratified fraction (or one fold of k) of a data set without splitting any patient."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from xray_cls.data.base import SplitArrays
from xray_cls.errors import UserError

log = logging.getLogger(__name__)


def grouped_stratified_split(
    labels: np.ndarray, groups: np.ndarray | None, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into sorted ``(train_idx, val_idx)``.

    Whole groups go to one side only. Each group counts towards its majority label (ties: the lowest
    label), and per label about ``val_fraction`` of its samples go to validation: at least one group
    when the label has two groups or more, and never all of them. ``groups=None`` makes every sample its
    own group. The result depends only on the inputs and ``seed``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    n = len(labels)
    if groups is not None and len(groups) != n:
        raise ValueError(f"{n} labels but {len(groups)} groups")
    if n == 0 or val_fraction == 0.0:
        return np.arange(n), np.arange(0)

    _, y = np.unique(labels, return_inverse=True)
    if groups is None:
        g = np.arange(n)
    else:
        _, g = np.unique(np.asarray(groups), return_inverse=True)
    y, g = y.reshape(-1), g.reshape(-1)
    num_classes, num_groups = int(y.max()) + 1, int(g.max()) + 1

    counts = np.bincount(g * num_classes + y, minlength=num_groups * num_classes)
    counts = counts.reshape(num_groups, num_classes)
    group_label = counts.argmax(axis=1)
    group_size = counts.sum(axis=1)

    rng = np.random.default_rng(seed)
    val_group = np.zeros(num_groups, dtype=bool)
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(group_label == c))
        if len(members) < 2:
            continue  # a lone group stays in train: the model must see the class at all
        # Take the prefix of the shuffled groups whose sample count is closest to the target.
        taken = np.concatenate(([0], np.cumsum(group_size[members])))
        target = val_fraction * taken[-1]
        k = int(np.clip(np.abs(taken - target).argmin(), 1, len(members) - 1))
        val_group[members[:k]] = True

    is_val = val_group[g]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def grouped_stratified_kfold(
    labels: np.ndarray, groups: np.ndarray | None, folds: int, fold: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``fold`` of ``folds`` as sorted ``(train_idx, val_idx)``: validation is that fold, train the rest.

    scikit-learn's ``StratifiedGroupKFold`` (groups shuffled with ``seed``): whole groups go to one fold
    only, each fold's class ratio is kept close to the pool's, and the folds cover every sample exactly
    once. ``groups=None`` makes every sample its own group; then (as when every group has one sample)
    ``StratifiedKFold`` does the same, faster (60,000 images: about 1 s instead of 14). For one ``seed``
    the ``folds`` calls partition the same way, so fold ``i`` of each job of a sweep is one part of one
    partition.
    """
    # A second to import: only k-fold runs need it.
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if groups is not None and len(groups) != n:
        raise ValueError(f"{n} labels but {len(groups)} groups")
    g = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    num_groups = len(np.unique(g))
    if num_groups < folds:
        unit = "images" if groups is None else "patients (groups)"
        raise ValueError(f"{folds} folds need at least {folds} {unit}; the pool has {num_groups}")
    singletons = num_groups == n
    splitter = (StratifiedKFold if singletons else StratifiedGroupKFold)(
        n_splits=folds, shuffle=True, random_state=seed
    )
    for i, (train_idx, val_idx) in enumerate(splitter.split(np.zeros(n), labels, None if singletons else g)):
        if i == fold:
            return np.sort(train_idx), np.sort(val_idx)
    raise AssertionError("unreachable: the splitter yields `folds` splits")


def training_pool(loaded: Mapping[str, SplitArrays]) -> SplitArrays:
    """What k-fold cross-validation folds: the train split, plus the data set's own val split where it has
    one (copied into one array). Where only one of them names patients, each image of the other is its own
    group."""
    train, val = loaded["train"], loaded.get("val")
    if val is None:
        return train
    log.info(
        "k-fold: the data set's val split (%d) joins train (%d) in the pool that is folded",
        len(val),
        len(train),
    )
    groups = None
    if train.groups is not None or val.groups is not None:
        groups = np.concatenate(
            [
                np.asarray(split.groups).astype(str)
                if split.groups is not None
                else np.array([f"{name}#{i}" for i in range(len(split))])
                for name, split in (("train", train), ("val", val))
            ]
        )
    return SplitArrays(
        np.concatenate([np.asarray(train.images), np.asarray(val.images)]),
        np.concatenate([train.labels, val.labels]),
        groups,
    )


def check_carved_split(
    labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, class_names: list[str], fraction: float
) -> None:
    """Refuse a validation split carved by ``data.val_fraction`` that leaves a class without a validation
    image, or with fewer training than validation images: the model would learn from a handful of images,
    or be judged on a class it is never shown."""
    train_counts = np.bincount(labels[train_idx], minlength=len(class_names))
    val_counts = np.bincount(labels[val_idx], minlength=len(class_names))
    for name, n_train, n_val in zip(class_names, train_counts, val_counts, strict=False):
        if n_train + n_val and (n_val == 0 or n_train < n_val):
            raise UserError(
                f"data.val_fraction={fraction} leaves class {name!r} {n_train} training and {n_val} "
                "validation images; each class needs at least one validation image and at least as many "
                "training as validation images: lower data.val_fraction (0.1 is usual), or add images of "
                "that class (a class whose images are all one patient's cannot be validated)"
            )
