"""safe_extract refuses escaping members; download_kaggle_dataset is all-or-nothing with clear errors.

Only the network boundary is replaced: KaggleApi.dataset_download_files writes a local archive instead.
"""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.xray_fixtures import fake_kaggle_download, fresh_kaggle_api, make_zip, write_kaggle_tree
from xray_cls.data.archive import safe_extract
from xray_cls.data.kaggle import download_kaggle_dataset
from xray_cls.errors import UserError

SLUG = "someone/chest-xray-pneumonia"


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("writer", [_zip, _tar], ids=["zip", "tar"])
def test_safe_extract_unpacks_a_clean_archive(tmp_path: Path, writer) -> None:
    archive = writer(tmp_path / "a.archive", {"top/a.txt": b"a", "top/sub/b.txt": b"b"})
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/top/a.txt").read_bytes() == b"a"
    assert (tmp_path / "out/top/sub/b.txt").read_bytes() == b"b"


@pytest.mark.parametrize("writer", [_zip, _tar], ids=["zip", "tar"])
@pytest.mark.parametrize("bad", ["../evil.txt", "top/../../evil.txt", "/tmp/evil_abs.txt"])
def test_safe_extract_refuses_traversal_and_extracts_nothing(tmp_path: Path, writer, bad: str) -> None:
    # A harmless member first: a checker that extracts as it goes would leave it behind.
    archive = writer(tmp_path / "a.archive", {"good.txt": b"ok", bad: b"pwned"})
    dest = tmp_path / "deep" / "out"
    with pytest.raises(UserError, match="nothing was extracted") as err:
        safe_extract(archive, dest)
    assert bad in str(err.value)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


@pytest.mark.parametrize("writer", [_zip, _tar], ids=["zip", "tar"])
def test_safe_extract_refuses_links_pointing_outside(tmp_path: Path, writer) -> None:
    archive = writer(tmp_path / "a.archive", {"good.txt": b"ok"}, links={"escape": "../../outside"})
    with pytest.raises(UserError, match="escape"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_extract_rejects_non_archives(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(UserError, match="not a zip or tar"):
        safe_extract(junk, tmp_path / "out")


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_missing_credentials_give_one_clear_user_error(tmp_path: Path, monkeypatch, capsys) -> None:
    fresh_kaggle_api(monkeypatch, tmp_path / "home")  # empty HOME, no KAGGLE_* variables
    dest = tmp_path / "data" / "chest_xray"
    with pytest.raises(UserError) as err:
        download_kaggle_dataset(SLUG, dest, manual_hint="HINT-TEXT")
    message = str(err.value)
    for fix in (
        "KAGGLE_API_TOKEN",
        "kaggle.json",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        str(dest),
        "HINT-TEXT",
        SLUG,
    ):
        assert fix in message, f"the error does not mention {fix}: {message}"
    assert not dest.exists()
    assert "kaggle auth login" not in capsys.readouterr().out  # kaggle's own help is not printed besides ours


def test_download_unpacks_into_place_atomically(tmp_path: Path, monkeypatch) -> None:
    source = write_kaggle_tree(tmp_path / "src", nested_duplicate=False, macosx=False, corrupt=False)
    archive = make_zip(tmp_path / "archive.zip", source.root)
    calls = fake_kaggle_download(monkeypatch, tmp_path / "home", archive)

    dest = tmp_path / "data" / "chest_xray"
    download_kaggle_dataset(SLUG, dest, manual_hint="")

    assert calls == [SLUG]
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.jpeg"))
    want = sorted(p.relative_to(source.root).as_posix() for p in source.root.rglob("*.jpeg"))
    assert got == want and got
    assert _leftovers(dest.parent) == [], "temporary download folder left behind"
    assert not list(dest.rglob("*.zip")), "the downloaded archive was not removed"
    written = [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert written == [], f"files (credentials?) written under HOME: {written}"


def test_network_failure_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    api = fresh_kaggle_api(
        monkeypatch, tmp_path / "home", KAGGLE_USERNAME="someone", KAGGLE_KEY="0123456789abcdef"
    )

    def dataset_download_files(self, dataset, path=None, **kwargs):
        Path(path, "partial.zip").write_bytes(b"PK\3\4 half")
        raise ConnectionError("Connection reset by peer")

    monkeypatch.setattr(api, "dataset_download_files", dataset_download_files)
    dest = tmp_path / "data" / "chest_xray"
    with pytest.raises(UserError, match="Connection reset by peer"):
        download_kaggle_dataset(SLUG, dest, manual_hint="")
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_malicious_download_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    archive = _zip(tmp_path / "evil.zip", {"chest_xray/train/a.txt": b"x", "../../escaped.txt": b"x"})
    fake_kaggle_download(monkeypatch, tmp_path / "home", archive)
    dest = tmp_path / "data" / "chest_xray"
    with pytest.raises(UserError, match="escaped"):
        download_kaggle_dataset(SLUG, dest, manual_hint="")
    assert not dest.exists()
    assert _leftovers(dest.parent) == []
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "data" / "escaped.txt").exists()


def test_download_refuses_to_overwrite_a_non_empty_destination(tmp_path: Path) -> None:
    dest = tmp_path / "chest_xray"
    (dest / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="already exists"):
        download_kaggle_dataset(SLUG, dest, manual_hint="")
    assert (dest / "train").is_dir()
