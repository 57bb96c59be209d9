"""grouped_stratified_split: whole groups, per-class fractions, determinism and speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.formats import patients as _patients
from xray_cls.data.splits import grouped_stratified_split


def test_partition_is_sorted_disjoint_and_complete() -> None:
    labels, groups = _patients(300)
    train, val = grouped_stratified_split(labels, groups, 0.2, seed=0)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))


def test_no_group_on_both_sides() -> None:
    labels, groups = _patients(300)
    train, val = grouped_stratified_split(labels, groups, 0.2, seed=3)
    assert not set(groups[train]) & set(groups[val])


@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_each_class_gets_about_its_fraction(fraction: float) -> None:
    labels, groups = _patients(600)
    _, val = grouped_stratified_split(labels, groups, fraction, seed=1)
    for c in range(3):
        total, held = np.sum(labels == c), np.sum(labels[val] == c)
        # Whole groups of at most 5: the closest prefix is within half a group of the target.
        assert abs(held - fraction * total) <= 3, (c, held, fraction * total)


def test_each_class_has_a_val_group_but_keeps_one_in_train() -> None:
    # 20 samples of class 0 in 20 groups; class 1 has 2 groups; class 2 a single group.
    labels = np.array([0] * 20 + [1, 1, 1] + [2, 2])
    groups = np.array([f"a{i}" for i in range(20)] + ["b0", "b0", "b1"] + ["c0", "c0"])
    train, val = grouped_stratified_split(labels, groups, 0.05, seed=0)
    assert np.sum(labels[val] == 0) == 1  # round(0.05 * 20) = 1
    assert np.sum(labels[val] == 1) >= 1 and np.sum(labels[train] == 1) >= 1  # 5% of 3 still takes a group
    assert np.sum(labels[val] == 2) == 0 and np.sum(labels[train] == 2) == 2  # a lone group stays in train


def test_groups_count_towards_their_majority_label() -> None:
    # Each group holds 3 samples of one class and 1 of the other: it must count as the majority class.
    labels = np.array([0, 0, 0, 1] * 10 + [1, 1, 1, 0] * 10)
    groups = np.repeat(np.arange(20), 4)
    _, val = grouped_stratified_split(labels, groups, 0.2, seed=0)
    val_groups = np.unique(groups[val])
    assert np.sum(val_groups < 10) == 2 and np.sum(val_groups >= 10) == 2


def test_no_groups_means_one_sample_each_with_exact_counts() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    train, val = grouped_stratified_split(labels, None, 0.1, seed=0)
    assert [int(np.sum(labels[val] == c)) for c in range(3)] == [5, 3, 2]
    assert len(train) == 90


def test_seeded_and_deterministic() -> None:
    labels, groups = _patients(400)
    first = grouped_stratified_split(labels, groups, 0.2, seed=7)
    again = grouped_stratified_split(labels.copy(), groups.copy(), 0.2, seed=7)
    other = grouped_stratified_split(labels, groups, 0.2, seed=8)
    assert np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_zero_fraction_and_bad_input() -> None:
    labels = np.array([0, 1, 0, 1])
    train, val = grouped_stratified_split(labels, None, 0.0, seed=0)
    assert train.tolist() == [0, 1, 2, 3] and val.size == 0
    with pytest.raises(ValueError, match="val_fraction"):
        grouped_stratified_split(labels, None, 1.0, seed=0)
    with pytest.raises(ValueError, match="groups"):
        grouped_stratified_split(labels, np.array([1, 2]), 0.5, seed=0)


def test_sixty_thousand_samples_take_milliseconds() -> None:
    labels, groups = _patients(20_000)  # about 60,000 samples
    assert len(labels) > 55_000
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        grouped_stratified_split(labels, groups, 0.1, seed=0)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.2, f"took {min(timings):.3f} s"
