"""Fetching a Kaggle data set into place, all or nothing."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from xray_cls.data.archive import safe_extract
from xray_cls.errors import UserError


def download_kaggle_dataset(slug: str, dest: Path, manual_hint: str) -> None:
    """Download the Kaggle data set ``slug`` (``owner/name``) and unpack its archive as ``dest``.

    The archive is downloaded and unpacked in a temporary folder next to ``dest`` (same file system) and
    renamed into place only once complete, so an interrupted or failed download never leaves a partial
    data set at ``dest``. ``manual_hint`` is appended to every error message: it tells the user how to
    place the files by hand.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(
            f"{dest} already exists but does not hold the expected data set. Remove it (or move it away) "
            f"and run again to download {slug!r}. {manual_hint}"
        )
    api = _authenticated_api(slug, dest, manual_hint)

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
    try:
        archive_dir = tmp / "archive"
        archive_dir.mkdir()
        try:
            api.dataset_download_files(slug, path=str(archive_dir), force=True, quiet=False)
        except Exception as err:  # requests/urllib3 errors, HTTP 403/404 and the like: all the user's to fix
            raise UserError(
                f"Downloading the Kaggle data set {slug!r} failed: {err}. Check the network connection and "
                f"that the data set exists and your account may download it. {manual_hint}"
            ) from None
        archives = sorted(archive_dir.iterdir())
        if len(archives) != 1:
            names = ", ".join(p.name for p in archives) or "nothing"
            raise UserError(
                f"The Kaggle download of {slug!r} produced {names}, not one archive. {manual_hint}"
            )
        contents = tmp / "contents"
        safe_extract(archives[0], contents)
        if dest.is_dir():
            dest.rmdir()  # empty, checked above; rename cannot replace a directory on every platform
        os.rename(contents, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _authenticated_api(slug: str, dest: Path, manual_hint: str) -> Any:
    # Importing kaggle authenticates at import time, prints help and may call sys.exit when there are no
    # credentials: keep its output quiet and turn every failure into one message that lists the fixes.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as err:
        # kaggle 2.x imports `six` without declaring it: name the module that is really missing.
        missing = err.name if err.name and err.name != "kaggle" else ""
        raise UserError(
            f"The kaggle package cannot be imported to download {slug!r} ({err}): "
            f"pip install kaggle {missing}. "
            f"Or download https://www.kaggle.com/datasets/{slug} by hand and unpack it into {dest}. "
            f"{manual_hint}"
        ) from None
    except (Exception, SystemExit) as err:
        why = "no credentials found" if isinstance(err, SystemExit) else str(err)
        raise UserError(
            f"Cannot log in to Kaggle to download {slug!r} ({why}). Do one of:\n"
            "  - export KAGGLE_API_TOKEN=<token>, a token from https://www.kaggle.com/settings/api;\n"
            "  - save your API key file as ~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_CONFIG_DIR to "
            "the folder that holds it;\n"
            "  - export KAGGLE_USERNAME=<user> and KAGGLE_KEY=<key>;\n"
            f"  - or download https://www.kaggle.com/datasets/{slug} by hand and unpack it into {dest}.\n"
            f"{manual_hint}"
        ) from None
    return api
