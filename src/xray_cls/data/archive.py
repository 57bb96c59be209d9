"""Unpacking downloaded archives without letting a member write outside the destination."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from xray_cls.errors import UserError


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar ``archive`` into ``dest``.

    Every member is checked before anything is written, so an archive with one member that would land
    outside ``dest`` (absolute path, ``..``, a link pointing out) is refused whole with a :class:`UserError`.
    """
    archive, dest = Path(archive), Path(dest)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, dest)
    else:
        raise UserError(
            f"{archive} is not a zip or tar archive (or is damaged); delete it and download it again"
        )


def _refuse(archive: Path, member: str, why: str) -> UserError:
    return UserError(
        f"Refusing to unpack {archive}: member {member!r} {why}. The archive is damaged or malicious; "
        "nothing was extracted. Download it again from the original source."
    )


def _inside(dest: Path, name: str) -> bool:
    return (dest / name).resolve().is_relative_to(dest.resolve())


def _check_name(archive: Path, dest: Path, member: str) -> None:
    # Backslashes are separators in archives written on Windows: judge them as such.
    name = member.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _refuse(archive, member, "has an absolute path")
    if ".." in PurePosixPath(name).parts or not _inside(dest, name):
        raise _refuse(archive, member, "would be written outside the destination")


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_name(archive, dest, info.filename)
                # zipfile writes links as small regular files, but a link pointing out is still a red flag.
                if stat.S_ISLNK(info.external_attr >> 16):
                    target = zf.read(info).decode("utf-8", "replace")
                    parent = PurePosixPath(info.filename.replace("\\", "/")).parent
                    if target.startswith("/") or not _inside(dest, str(parent / target)):
                        raise _refuse(archive, info.filename, f"is a link pointing outside ({target})")
            dest.mkdir(parents=True, exist_ok=True)
            zf.extractall(dest)
    except zipfile.BadZipFile as err:
        raise UserError(
            f"{archive} is a damaged zip archive ({err}); delete it and download it again"
        ) from None


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                # The "data" filter below would quietly strip a leading "/": refuse such names outright.
                _check_name(archive, dest, member.name)
                try:
                    # It rejects what remains: links pointing out, device files, odd permissions.
                    tarfile.data_filter(member, str(dest))
                except tarfile.FilterError as err:
                    raise _refuse(archive, member.name, f"is unsafe ({err})") from None
            dest.mkdir(parents=True, exist_ok=True)
            tf.extractall(dest, members=members, filter="data")
    except tarfile.ReadError as err:
        raise UserError(
            f"{archive} is a damaged tar archive ({err}); delete it and download it again"
        ) from None
