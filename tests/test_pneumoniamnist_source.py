"""PneumoniaMNISTSource: the MedMNIST .npz read as is; downloads verified and never left half-written.

Only the network boundary (urllib's urlopen, which torchvision's download_url calls) is replaced.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.xray_fixtures import write_pneumoniamnist_npz
from xray_cls.data.pneumoniamnist import PneumoniaMNISTSource
from xray_cls.errors import UserError


class _Response(io.BytesIO):
    def __init__(self, url: str, body: bytes) -> None:
        super().__init__(body)
        self.url, self.length = url, len(body)


def _serve(monkeypatch: pytest.MonkeyPatch, body: bytes | None) -> list[str]:
    """Replace urlopen: answer every request with ``body``, or fail as offline when it is None."""
    requested: list[str] = []

    def urlopen(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        requested.append(url)
        if body is None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return _Response(url, body)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


@pytest.mark.parametrize(("size", "filename"), [(28, "pneumoniamnist.npz"), (64, "pneumoniamnist_64.npz")])
def test_loads_all_three_splits(tmp_path: Path, size: int, filename: str) -> None:
    arrays = write_pneumoniamnist_npz(
        tmp_path / "medmnist" / filename, {"train": 10, "val": 4, "test": 6}, size
    )
    splits = PneumoniaMNISTSource(size=size).load(tmp_path)
    assert set(splits) == {"train", "val", "test"}
    for name, split in splits.items():
        assert split.images.shape == (len(arrays[f"{name}_labels"]), 1, size, size)
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64 and split.labels.ndim == 1
        assert np.array_equal(split.images[:, 0], arrays[f"{name}_images"])
        assert np.array_equal(split.labels, arrays[f"{name}_labels"][:, 0])


def test_prepare_does_not_download_an_existing_file(tmp_path: Path, monkeypatch) -> None:
    write_pneumoniamnist_npz(tmp_path / "medmnist" / "pneumoniamnist_128.npz", 2, 128)
    requested = _serve(monkeypatch, None)
    PneumoniaMNISTSource(size=128).prepare(tmp_path)
    assert requested == []


def test_offline_download_names_the_file_and_url(tmp_path: Path, monkeypatch) -> None:
    requested = _serve(monkeypatch, None)
    with pytest.raises(UserError) as err:
        PneumoniaMNISTSource(size=224).prepare(tmp_path)
    expected = tmp_path / "medmnist" / "pneumoniamnist_224.npz"
    url = "https://zenodo.org/records/10519652/files/pneumoniamnist_224.npz?download=1"
    assert str(expected) in str(err.value) and url in str(err.value)
    assert requested and requested[0] == url
    assert not expected.exists() and list((tmp_path / "medmnist").iterdir()) == []


def test_download_with_a_wrong_checksum_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "fake.npz"
    write_pneumoniamnist_npz(fake, 2)
    _serve(monkeypatch, fake.read_bytes())  # a well-formed file, but not the published one
    with pytest.raises(UserError, match="could not be downloaded"):
        PneumoniaMNISTSource(size=28).prepare(tmp_path)
    assert list((tmp_path / "medmnist").iterdir()) == []


def test_missing_file_without_download(tmp_path: Path, monkeypatch) -> None:
    requested = _serve(monkeypatch, None)
    source = PneumoniaMNISTSource(size=64, download=False)
    with pytest.raises(UserError, match="download=false") as err:
        source.prepare(tmp_path)
    assert str(tmp_path / "medmnist" / "pneumoniamnist_64.npz") in str(err.value)
    assert requested == []
    with pytest.raises(UserError, match=r"pneumoniamnist_64\.npz"):
        source.load(tmp_path)


def test_damaged_file_and_bad_size(tmp_path: Path) -> None:
    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "pneumoniamnist.npz").write_bytes(b"PK\3\4 cut short")
    with pytest.raises(UserError, match="damaged"):
        PneumoniaMNISTSource().load(tmp_path)
    with pytest.raises(UserError, match="sizes"):
        PneumoniaMNISTSource(size=32)
