"""ImageFolderSource and class_folders on both layouts: split folders, or one folder of class folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.xray_fixtures import write_image, write_image_folder
from xray_cls.data.decode import decode_image
from xray_cls.data.image_folder import ImageFolderSource, class_folders
from xray_cls.errors import UserError

CLASSES = ["cat", "dog", "emu"]


def _source(path: Path, **kwargs) -> ImageFolderSource:
    return ImageFolderSource(
        str(path), image_size=12, num_channels=1, class_names=CLASSES, workers=1, **kwargs
    )


def test_class_folders_lists_visible_folders_sorted(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "flat", {"dog": 1, "cat": 1, "emu": 1})
    (tmp_path / "flat" / "__MACOSX").mkdir()
    (tmp_path / "flat" / ".hidden").mkdir()
    assert class_folders(str(tmp_path / "flat")) == CLASSES

    write_image_folder(tmp_path / "split" / "train", {"b": 1, "a": 1})
    write_image_folder(tmp_path / "split" / "test", {"b": 1, "a": 1})
    assert class_folders(str(tmp_path / "split")) == ["a", "b"]  # read from train/, not ["test", "train"]


def test_class_folders_of_a_missing_or_empty_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist") as err:
        class_folders(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        class_folders(str(tmp_path / "empty"))


def test_one_folder_is_split_into_train_and_test_by_class(tmp_path: Path) -> None:
    files = write_image_folder(tmp_path / "flat", {"cat": 20, "dog": 10, "emu": 5})
    splits = _source(tmp_path / "flat", test_fraction=0.2).load(tmp_path / "data")
    assert set(splits) == {"train", "test"}  # val is the data module's business
    test_counts = np.bincount(splits["test"].labels, minlength=3).tolist()
    assert test_counts == [4, 2, 1]
    assert np.bincount(splits["train"].labels, minlength=3).tolist() == [16, 8, 4]
    # Every image lands in exactly one split: compare pixels against each file's own decoding.
    decoded = {f: decode_image(f, 12, 1).tobytes() for fs in files.values() for f in fs}
    seen = [img.tobytes() for split in splits.values() for img in split.images]
    assert sorted(seen) == sorted(decoded.values())
    assert list((tmp_path / "data" / "cache").glob("*.npy")), "not cached under root/cache"


def test_the_test_split_is_seeded(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "flat", {"cat": 12, "dog": 12, "emu": 12})
    first = _source(tmp_path / "flat", seed=1).load(tmp_path / "data")["test"].images
    again = _source(tmp_path / "flat", seed=1).load(tmp_path / "data")["test"].images
    other = _source(tmp_path / "flat", seed=2).load(tmp_path / "data")["test"].images
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_train_val_test_folders_are_used_as_given(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        write_image_folder(tmp_path / "set" / split, dict.fromkeys(CLASSES, n), mode="RGB", suffix=".jpg")
    source = ImageFolderSource(str(tmp_path / "set"), 10, 3, CLASSES, workers=1)
    splits = source.load(tmp_path / "data")
    assert {k: len(v) for k, v in splits.items()} == {"train": 18, "val": 6, "test": 9}
    assert splits["val"].images.shape == (6, 3, 10, 10)
    assert splits["train"].groups is None


def test_train_folder_without_test_takes_test_from_train(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "set" / "train", dict.fromkeys(CLASSES, 10))
    splits = _source(tmp_path / "set", test_fraction=0.3).load(tmp_path / "data")
    assert {k: len(v) for k, v in splits.items()} == {"train": 21, "test": 9}


def test_missing_class_and_junk_files(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "flat", {"cat": 3, "dog": 3})
    with pytest.raises(UserError, match="emu") as err:
        _source(tmp_path / "flat").load(tmp_path / "data")
    assert str(tmp_path / "flat" / "emu") in str(err.value)

    write_image_folder(tmp_path / "flat", {"emu": 3})
    write_image(tmp_path / "flat" / "cat" / "._img_000.png")  # AppleDouble twin: a valid image, yet junk
    write_image(tmp_path / "flat" / "__MACOSX" / "cat" / "img_000.png")
    (tmp_path / "flat" / "dog" / "labels.csv").write_text("a,b")
    splits = _source(tmp_path / "flat", test_fraction=0.34).load(tmp_path / "data")
    assert sum(len(s) for s in splits.values()) == 9


def test_missing_path_is_reported_by_prepare(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        _source(tmp_path / "nowhere").prepare(tmp_path / "data")
