"""Checkpoint saving that never fails silently: Lightning's own ``TorchCheckpointIO``, checked afterwards."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from xray_cls.errors import UserError


class CheckpointNotSaved(UserError):
    """A checkpoint file could not be written: training stops at the first such failure.

    ``measured``: the metrics of the epochs before it, which the failed run's metrics.json keeps.
    """

    measured: Mapping[str, Any] = MappingProxyType({})  # read-only default; train._fit sets its own


class CheckedCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that raises :class:`CheckpointNotSaved` when a checkpoint was not written.

    Lightning 2.6's atomic save swallows a ``PermissionError`` (a read-only ``checkpoints/`` folder): the run
    went on without checkpoints and failed at the end, when testing the best one. A local file is checked
    after each save: it must be a new file (the save renames a fresh temporary file into place), so a stale
    checkpoint of the same name left from before does not pass for the new one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failed: CheckpointNotSaved | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if self.failed is not None:
            # ModelCheckpoint(save_on_exception=True) tries again while the first failure unwinds: say once
            # what went wrong, about the first file.
            raise self.failed
        local = isinstance(get_filesystem(path), LocalFileSystem)
        before = _identity(path) if local else None
        try:
            super().save_checkpoint(checkpoint, path, storage_options)
            if local and (_identity(path) is None or _identity(path) == before):
                _raise_write_error(Path(path).parent)
        except OSError as err:
            self.failed = CheckpointNotSaved(
                f"checkpoint {path} could not be written ({err.strerror or err}); training stopped at the "
                f"first failed save, and metrics.json holds what was measured until then. Make "
                f"{Path(path).parent} writable or free space on its disk, then train again"
            )
            raise self.failed from None


def _identity(path: Any) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _raise_write_error(folder: Path) -> None:
    """Find out why nothing was written by writing a file there ourselves, and raise that error."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_test."):
        pass
    raise OSError("the file did not appear, for a reason the save did not report")
