"""ChestXraySource on a synthetic Kaggle-layout tree: one copy read, junk ignored, patients kept together."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.xray_fixtures import fake_kaggle_download, make_zip, write_kaggle_tree
from xray_cls.data.chest_xray import ChestXraySource
from xray_cls.data.folders import patient_id
from xray_cls.data.splits import grouped_stratified_split
from xray_cls.errors import UserError

SIZE = 16


def _load(source: ChestXraySource, root: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = source.load(root)
    return splits, [str(w.message) for w in caught]


def _per_class(labels: np.ndarray) -> dict[str, int]:
    return {"NORMAL": int(np.sum(labels == 0)), "PNEUMONIA": int(np.sum(labels == 1))}


def test_loads_train_and_test_with_the_right_counts(tmp_path: Path) -> None:
    tree = write_kaggle_tree(tmp_path)
    splits, caught = _load(ChestXraySource(image_size=SIZE, workers=1), tmp_path)
    assert set(splits) == {"train", "test"}
    for name, split in splits.items():
        # Nested duplicate and __MACOSX not counted, ._* / .DS_Store / .txt skipped, corrupt file left out.
        assert _per_class(split.labels) == tree.counts[name], name
        assert split.images.shape == (len(split), 1, SIZE, SIZE) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.int64 and split.groups is not None
    assert len(caught) == 1 and "Left out 1 of" in caught[0] and "person900_bacteria_1.jpeg" in caught[0]


def test_groups_are_patients_and_never_split(tmp_path: Path) -> None:
    tree = write_kaggle_tree(tmp_path)
    train = _load(ChestXraySource(image_size=SIZE, workers=1), tmp_path)[0]["train"]
    pneumonia = set(train.groups[train.labels == 1])
    assert pneumonia == tree.patients["train"]  # person900 only had the corrupt file
    normal = train.groups[train.labels == 0]
    assert len(set(normal)) == len(normal) and all(g.startswith("im-") for g in normal)  # one study each
    for seed in range(5):
        tr, va = grouped_stratified_split(train.labels, train.groups, 0.3, seed)
        assert not set(train.groups[tr]) & set(train.groups[va]), "a patient is in train and val"
        assert set(train.labels[va]) == {0, 1}


def test_official_val_only_on_request(tmp_path: Path) -> None:
    tree = write_kaggle_tree(tmp_path)
    splits, _ = _load(
        ChestXraySource(image_size=SIZE, num_channels=3, use_official_val=True, workers=1), tmp_path
    )
    assert set(splits) == {"train", "val", "test"}
    assert _per_class(splits["val"].labels) == tree.counts["val"]
    assert splits["val"].images.shape[1:] == (3, SIZE, SIZE)


def test_prepare_skips_the_download_when_the_tree_is_there(tmp_path: Path, monkeypatch) -> None:
    write_kaggle_tree(tmp_path)
    monkeypatch.setitem(sys.modules, "kaggle", None)  # any attempt to import kaggle now fails
    ChestXraySource(image_size=SIZE).prepare(tmp_path)


def test_prepare_downloads_then_load_reads_the_unpacked_archive(tmp_path: Path, monkeypatch) -> None:
    """The real archive layout (nested duplicate, __MACOSX) unpacked as root/chest_xray by prepare."""
    source_tree = write_kaggle_tree(tmp_path / "zipped")
    archive = make_zip(tmp_path / "archive.zip", source_tree.root)
    calls = fake_kaggle_download(monkeypatch, tmp_path / "home", archive)
    root = tmp_path / "data"
    source = ChestXraySource(image_size=SIZE, workers=1)
    source.prepare(root)
    assert calls == ["paultimothymooney/chest-xray-pneumonia"]
    assert (root / "chest_xray" / "chest_xray" / "train").is_dir()
    splits, _ = _load(source, root)
    assert _per_class(splits["train"].labels) == source_tree.counts["train"]
    assert _per_class(splits["test"].labels) == source_tree.counts["test"]
    assert list((root / "cache").glob("*.npy")), "no cache under root/cache"


def test_missing_tree_without_download_names_the_folder(tmp_path: Path) -> None:
    source = ChestXraySource(image_size=SIZE, download=False)
    with pytest.raises(UserError, match="download=false") as err:
        source.prepare(tmp_path)
    assert str(tmp_path / "chest_xray") in str(err.value)
    with pytest.raises(UserError, match="No chest X-ray tree"):
        source.load(tmp_path)


@pytest.mark.filterwarnings("ignore:Left out")
def test_missing_or_empty_class_folder_is_named(tmp_path: Path) -> None:
    tree = write_kaggle_tree(tmp_path, nested_duplicate=False, macosx=False)
    source = ChestXraySource(image_size=SIZE, class_names=("NORMAL", "PNEUMONIA", "COVID"), workers=1)
    with pytest.raises(UserError, match="COVID") as err:
        source.load(tmp_path)
    assert str(tree.tree / "train" / "COVID") in str(err.value)

    for image in (tree.tree / "test" / "NORMAL").glob("*.jpeg"):
        image.unlink()
    with pytest.raises(UserError, match="holds no images") as err:
        ChestXraySource(image_size=SIZE, workers=1).load(tmp_path)
    assert str(tree.tree / "test" / "NORMAL") in str(err.value)


def test_normal_files_of_one_study_are_one_patient(tmp_path: Path) -> None:
    """Kaggle's NORMAL files of one study (IM-0629-0001, IM-0629-0001-0001, ...) are X-rays of one child."""
    names = {
        "IM-0629-0001.jpeg": "im-0629",
        "IM-0629-0001-0002.jpeg": "im-0629",
        "NORMAL2-IM-0629-0001.jpeg": "normal2-im-0629",
        "person12_bacteria_3.jpeg": "person12",
        "scan_7.png": "NORMAL/scan_7.png",
    }
    for name, patient in names.items():
        assert patient_id(tmp_path / "NORMAL" / name, tmp_path) == patient
