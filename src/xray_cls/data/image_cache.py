"""Decode an image set once into a uint8 ``[N, C, H, W]`` ``.npy`` on disk, then memory-map it every run.

Decoding large JPEGs costs far more than a training step; doing it once per data set instead of once per
epoch is what keeps the GPU busy. The cache is keyed by the file list (relative paths, sizes, mtimes), the
output size and channel count, so any change rebuilds it and anything else reuses it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import signal
import socket
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from xray_cls.data.decode import MAX_UPSCALE, TooSmall, decode_image, image_mode
from xray_cls.errors import UserError

# Bump when decoding changes in a way that alters pixels: old caches then stop matching.
CACHE_VERSION = 2  # 2: alpha composited on black; images far smaller than image_size left out
_CHUNK = 64
# Temporary files of a build: ".<stem>.<host>-<pid>[.compact].tmp.{npy,json}" (before: ".<stem>.<pid>...").
_TEMPORARY = re.compile(r"^\.images_\w+\.(?:(?P<host>\w+)-)?(?P<pid>\d+)\.(?:compact\.)?tmp\.(?:npy|json)$")

log = logging.getLogger(__name__)


def load_or_build_cache(
    files: Sequence[Path],
    root: Path,
    image_size: int,
    num_channels: int,
    cache_dir: Path,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The decoded images of ``files`` (read-only memory map) and the indices into ``files`` they hold.

    Files that cannot be decoded, or are far smaller than ``image_size`` (see ``MAX_UPSCALE``), are left out,
    with one warning per process naming them; the returned indices say which files the array rows are.
    ``root`` only makes the cache key independent of where the data set lives. ``workers`` processes decode
    in parallel (default: every CPU this process may use).
    """
    image_mode(num_channels)
    files = [Path(f) for f in files]
    tail = (num_channels, image_size, image_size)
    if not files:
        return np.zeros((0, *tail), dtype=np.uint8), np.zeros(0, dtype=np.int64)

    names = [_relative(f, Path(root)) for f in files]
    key = _cache_key(files, names, image_size, num_channels)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(cache_dir)
    stem = f"images_{image_size}px_{num_channels}ch_{key[:16]}"
    npy, meta = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"

    cached = _open_cached(npy, meta, key, len(files), tail)
    if cached is None:
        _build(files, names, image_size, num_channels, npy, meta, key, workers)
        cached = _open_cached(npy, meta, key, len(files), tail)
        if cached is None:
            raise RuntimeError(f"the image cache {npy} just written cannot be read back")
    images, skipped, why = cached
    if len(skipped) and str(meta) not in _REPORTED:
        # Once per process: a run loads each split more than once (prepare_data and setup, fit and test).
        _REPORTED.add(str(meta))
        listed = ", ".join(f"{names[i]} ({_short(w)})" for i, w in zip(skipped[:10], why, strict=False))
        warnings.warn(
            f"Left out {len(skipped)} of {len(files)} image files under {root} that cannot be decoded or "
            f"are more than {MAX_UPSCALE}x smaller than data.image_size (all listed with the reason in "
            f"{meta}): {listed}{' ...' if len(skipped) > 10 else ''}",
            stacklevel=2,
        )
    return images, np.setdiff1d(np.arange(len(files)), skipped)


_REPORTED: set[str] = set()  # caches whose left-out files this process has warned about


def _short(why: str) -> str:
    """``too small: 1x1 px`` or ``unreadable``; the sidecar keeps the whole reason."""
    if why.startswith(f"{TooSmall.__name__}: "):
        return "too small: " + why.removeprefix(f"{TooSmall.__name__}: ").split(",")[0]
    return "unreadable"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _cache_key(files: list[Path], names: list[str], image_size: int, num_channels: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION} {image_size}px {num_channels}ch\n".encode())
    for path, name in zip(files, names, strict=True):
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # vanished since the scan: it will be reported as unreadable
            size, mtime = -1, -1
        digest.update(f"{name}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def _open_cached(
    npy: Path, meta: Path, key: str, num_files: int, tail: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    if not npy.exists() and not meta.exists():
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("key") != key:
            raise ValueError("its sidecar belongs to other images")
        skipped = np.asarray(info["skipped"], dtype=np.int64)
        why = list(info.get("skipped_why", [])) or ["unreadable"] * len(skipped)
        images = np.load(npy, mmap_mode="r")
        expected = (num_files - len(skipped), *tail)
        if images.shape != expected or images.dtype != np.uint8:
            raise ValueError(f"it holds {images.dtype} {images.shape}, expected uint8 {expected}")
    except Exception as err:  # whatever is wrong with it (truncated, garbage, half written), rebuild
        warnings.warn(f"Image cache {npy} is unusable ({err}); rebuilding it.", stacklevel=3)
        return None
    return images, skipped, why


def _build(
    files: list[Path],
    names: list[str],
    image_size: int,
    num_channels: int,
    npy: Path,
    meta: Path,
    key: str,
    workers: int | None,
) -> None:
    n, tail = len(files), (num_channels, image_size, image_size)
    # A process-unique temporary name in the same folder: os.replace is then atomic, and concurrent
    # builders (one per DDP rank) never write into each other's file.
    owner = f"{_host()}-{os.getpid()}"  # the host too: a cache folder may be shared by the nodes of a cluster
    tmp = npy.with_name(f".{npy.stem}.{owner}.tmp.npy")
    compact = npy.with_name(f".{npy.stem}.{owner}.compact.tmp.npy")
    tmp_meta = meta.with_name(f".{meta.stem}.{owner}.tmp.json")
    try:
        # Only the header and the file size are set here: the decoding processes open it themselves.
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *tail)).flush()
        why = _decode_all(tmp, files, image_size, num_channels, workers, desc=f"Decoding {npy.name}")
        failed = sorted(why)

        if len(failed) == n:
            raise UserError(
                f"None of the {n} image files could be decoded (first: {files[0]}). "
                "The data set is damaged or not made of images: unpack or download it again."
            )
        if failed:
            keep = np.setdiff1d(np.arange(n), failed)
            full = np.load(tmp, mmap_mode="r")
            out = np.lib.format.open_memmap(compact, mode="w+", dtype=np.uint8, shape=(len(keep), *tail))
            for start in range(0, len(keep), 1024):  # bounded memory: a block of rows at a time
                out[start : start + 1024] = full[keep[start : start + 1024]]
            out.flush()
            del out, full
            os.replace(compact, tmp)

        meta.unlink(missing_ok=True)  # the sidecar is written last: it marks the pair complete
        os.replace(tmp, npy)
        info = {
            "key": key,
            "version": CACHE_VERSION,
            "shape": [n - len(failed), *tail],
            "num_files": n,
            "skipped": failed,
            "skipped_files": [names[i] for i in failed],
            "skipped_why": [why[i] for i in failed],
        }
        tmp_meta.write_text(json.dumps(info, indent=1))
        os.replace(tmp_meta, meta)
    finally:
        for leftover in (tmp, compact, tmp_meta):
            leftover.unlink(missing_ok=True)


def _decode_all(
    tmp: Path, files: list[Path], image_size: int, num_channels: int, workers: int | None, desc: str
) -> dict[int, str]:
    """Decode into ``tmp``; returns why each file that could not be used was left out, by index."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # Several chunks per worker even for small sets, so a slow chunk does not leave the others idle.
    size = max(1, min(_CHUNK, -(-len(files) // (4 * max(1, workers)))))
    chunks = [(start, [str(f) for f in files[start : start + size]]) for start in range(0, len(files), size)]
    workers = max(1, min(workers, len(chunks)))
    failed: dict[int, str] = {}
    with tqdm(total=len(files), desc=desc, unit="img") as bar:
        if workers == 1:
            for start, paths in chunks:
                failed |= _decode_chunk(str(tmp), start, paths, image_size, num_channels)
                bar.update(len(paths))
        else:
            pool = ProcessPoolExecutor(workers, initializer=_die_with_parent, initargs=(os.getpid(),))
            try:
                futures = {
                    pool.submit(_decode_chunk, str(tmp), start, paths, image_size, num_channels): len(paths)
                    for start, paths in chunks
                }
                for future in as_completed(futures):
                    failed |= future.result()
                    bar.update(futures[future])
            finally:
                pool.shutdown(cancel_futures=True)  # on Ctrl-C, do not decode the rest first
    return failed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_temporaries(cache_dir: Path) -> None:
    """Delete the temporary files of builds on this host whose process is gone (killed, e.g. by kill -9 or
    the out-of-memory killer: a ``finally`` never ran). A live build's files, and those of other hosts
    sharing the folder, are left alone."""
    host = _host()
    for entry in os.scandir(cache_dir):
        match = _TEMPORARY.match(entry.name)
        if match is None or match["host"] not in (None, host) or _alive(int(match["pid"])):
            continue
        Path(entry.path).unlink(missing_ok=True)
        log.info("removed %s, left by a cache build (process %s) that was killed", entry.path, match["pid"])


def _die_with_parent(parent: int) -> None:
    """Decoder processes end with the process that started them, even when it is killed (kill -9)."""
    try:  # Linux: the kernel sends SIGKILL to this process when its parent dies (PR_SET_PDEATHSIG)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (AttributeError, OSError):  # no prctl (macOS, Windows): the pool ends them on a normal exit
        return
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _decode_chunk(
    tmp: str, start: int, paths: list[str], image_size: int, num_channels: int
) -> dict[int, str]:
    out = np.load(tmp, mmap_mode="r+")
    failed = {}
    for index, path in enumerate(paths, start):
        try:
            out[index] = decode_image(Path(path), image_size, num_channels)
        except Exception as err:  # PIL raises many types for broken files; each one only costs that file
            failed[index] = f"{type(err).__name__}: {err}".replace("\n", " ")
    out.flush()
    return failed
