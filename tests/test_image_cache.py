"""The decoded-image cache: geometry, modes, reuse, rebuilds, corrupt caches and unreadable files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from torchvision import transforms

from tests.xray_fixtures import write_corrupt_image, write_image
from xray_cls.data.decode import decode_image
from xray_cls.data.image_cache import load_or_build_cache
from xray_cls.errors import UserError


def _tree(base: Path, n: int = 6) -> list[Path]:
    return [
        write_image(
            base / f"c{i % 2}" / f"img{i}.{'png' if i % 3 else 'jpg'}", (30 + 3 * i, 24 + 2 * i), seed=i
        )
        for i in range(n)
    ]


def _bands(width: int, height: int, vertical: bool) -> np.ndarray:
    """Black outer quarters, white middle half, across the long side."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    if vertical:
        pixels[:, width // 4 : 3 * width // 4] = 255
    else:
        pixels[height // 4 : 3 * height // 4] = 255
    return pixels


def _cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.npy"))


def _load(files, root, size=16, channels=1, cache=None, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, kept = load_or_build_cache(files, root, size, channels, cache or root / "cache", **kwargs)
    return images, kept, [str(w.message) for w in caught]


@pytest.mark.parametrize("vertical", [True, False], ids=["landscape", "portrait"])
def test_shorter_side_is_resized_then_centre_cropped(tmp_path: Path, vertical: bool) -> None:
    width, height = (80, 40) if vertical else (40, 80)
    path = tmp_path / "bands.png"
    Image.fromarray(_bands(width, height, vertical)).save(path)
    out = decode_image(path, 20, 1)
    assert out.shape == (1, 20, 20) and out.dtype == np.uint8
    # The 40x20 resize keeps exactly the white middle half: squashing or a corner crop would show black.
    assert out.mean() > 240


def test_matches_torchvision_resize_and_center_crop(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", (57, 43), mode="RGB", seed=1)
    reference = transforms.Compose([transforms.Resize(24), transforms.CenterCrop(24)])
    with Image.open(path) as img:
        expected = np.asarray(reference(img.convert("RGB"))).transpose(2, 0, 1)
    assert np.array_equal(decode_image(path, 24, 3), expected)


def test_jpeg_draft_decoding_matches_a_full_decode(tmp_path: Path) -> None:
    # A blurred 8-px texture: decoding at 1/4 scale keeps it, a coarser draft (1/8) visibly blurs it.
    rng = np.random.default_rng(0)
    texture = np.kron(rng.integers(0, 256, (25, 50)), np.ones((8, 8))).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(texture).filter(ImageFilter.GaussianBlur(2)).save(path, quality=95)
    with Image.open(path) as img:
        full = np.asarray(transforms.CenterCrop(50)(transforms.Resize(50)(img))).astype(int)
    drafted = decode_image(path, 50, 1)[0]
    assert drafted.shape == (50, 50)
    assert np.abs(drafted - full).mean() < 6  # 3.6 here; a 1/8-scale draft gives 12.9


def test_modes_are_converted_to_the_channel_count(tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(red)
    grey = write_image(tmp_path / "grey.png", (20, 20))
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 20), 40_000, dtype=np.uint16)).save(deep)  # 16-bit, as medical PNGs come

    rgb = decode_image(red, 8, 3)
    assert rgb.shape == (3, 8, 8) and rgb[0].min() > 190 and rgb[1:].max() < 20
    assert decode_image(red, 8, 1).shape == (1, 8, 8)
    as_rgb = decode_image(grey, 8, 3)
    assert np.array_equal(as_rgb[0], as_rgb[1]) and np.array_equal(as_rgb[1], as_rgb[2])
    assert abs(int(decode_image(deep, 8, 1).mean()) - round(40_000 / 257)) <= 1  # scaled, not clipped at 255


@pytest.mark.parametrize("channels", [1, 3])
def test_builds_a_memory_mapped_array_in_file_order(tmp_path: Path, channels: int) -> None:
    files = _tree(tmp_path / "data")
    images, kept, caught = _load(files, tmp_path / "data", size=12, channels=channels, workers=1)
    assert caught == []
    assert isinstance(images, np.memmap) and not images.flags.writeable
    assert images.shape == (6, channels, 12, 12) and images.dtype == np.uint8
    assert kept.tolist() == list(range(6))
    for i in (0, 4):
        assert np.array_equal(images[i], decode_image(files[i], 12, channels))
    assert not [p for p in (tmp_path / "data/cache").iterdir() if p.name.startswith(".")], (
        "temporary files left"
    )


def test_parallel_build_equals_serial_build(tmp_path: Path) -> None:
    files = _tree(tmp_path / "data", n=10)
    write_corrupt_image(tmp_path / "data/c0/broken.png")
    files.append(tmp_path / "data/c0/broken.png")
    serial, kept_serial, _ = _load(files, tmp_path / "data", cache=tmp_path / "a", workers=1)
    parallel, kept_parallel, _ = _load(files, tmp_path / "data", cache=tmp_path / "b", workers=2)
    assert np.array_equal(serial, parallel) and np.array_equal(kept_serial, kept_parallel)


def test_reused_when_nothing_changed(tmp_path: Path) -> None:
    files = _tree(tmp_path / "data")
    load_or_build_cache(files, tmp_path / "data", 16, 1, tmp_path / "cache", workers=1)
    (npy,) = _cache_files(tmp_path / "cache")
    before = npy.stat()
    images, _, caught = _load(files, tmp_path / "data", cache=tmp_path / "cache", workers=1)
    after = npy.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "cache was rebuilt"
    assert caught == [] and images.shape[0] == 6


@pytest.mark.parametrize("change", ["size", "channels", "file touched", "file added", "data set moved"])
def test_rebuilt_when_its_inputs_change(tmp_path: Path, change: str) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    files = _tree(data)
    load_or_build_cache(files, data, 16, 1, cache, workers=1)
    (first,) = _cache_files(cache)
    before = first.stat()
    size, channels = 16, 1
    if change == "size":
        size = 20
    elif change == "channels":
        channels = 3
    elif change == "file touched":
        os.utime(files[2], ns=(files[2].stat().st_atime_ns, files[2].stat().st_mtime_ns + 10**9))
    elif change == "file added":
        files.append(write_image(data / "c0" / "new.png", seed=42))
    else:  # moving the whole tree keeps relative names, sizes and mtimes: the cache stays valid
        data = data.rename(tmp_path / "moved")
        files = [data / f.relative_to(tmp_path / "data") for f in files]
    images, _, _ = _load(files, data, size, channels, cache=cache, workers=1)
    built = _cache_files(cache)
    if change == "data set moved":
        assert built == [first] and (first.stat().st_ino, first.stat().st_mtime_ns) == (
            before.st_ino,
            before.st_mtime_ns,
        )
    else:
        assert len(built) == 2, f"no new cache for a {change}"
        assert images.shape == (len(files), channels, size, size)


@pytest.mark.parametrize(
    "damage", ["truncated npy", "garbage npy", "missing sidecar", "garbage sidecar", "wrong key"]
)
def test_damaged_cache_is_detected_and_rebuilt(tmp_path: Path, damage: str) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    files = _tree(data)
    good, _ = load_or_build_cache(files, data, 16, 1, cache, workers=1)
    good = np.array(good)
    (npy,) = _cache_files(cache)
    sidecar = npy.with_suffix(".json")
    if damage == "truncated npy":
        npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    elif damage == "garbage npy":
        npy.write_bytes(b"\0" * 100)
    elif damage == "missing sidecar":
        sidecar.unlink()
    elif damage == "garbage sidecar":
        sidecar.write_text("{not json")
    else:
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "key": "0" * 64}))
    images, _, caught = _load(files, data, cache=cache, workers=1)
    assert len(caught) == 1 and "rebuilding" in caught[0] and npy.name in caught[0]
    assert np.array_equal(images, good)
    images, _, caught = _load(files, data, cache=cache, workers=1)
    assert caught == [], "the rebuilt cache is not reused"


def test_unreadable_files_are_left_out_with_one_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = _tree(data)
    bad = [
        write_corrupt_image(data / "c0" / "garbage.jpg", "garbage"),
        write_corrupt_image(data / "c1" / "empty.png", "empty"),
        write_corrupt_image(data / "c1" / "truncated.jpg", "truncated"),
    ]
    mixed = [*files[:2], bad[0], *files[2:4], bad[1], bad[2], *files[4:]]
    images, kept, caught = _load(mixed, data, workers=1)
    assert len(caught) == 1, caught
    assert caught[0].startswith("Left out 3 of 9") and all(b.name in caught[0] for b in bad)
    assert kept.tolist() == [0, 1, 3, 4, 7, 8]
    assert images.shape[0] == 6
    for row, index in enumerate(kept):
        assert np.array_equal(images[row], decode_image(mixed[index], 16, 1))
    # Reusing the cache in the same process (a run loads each split more than once) does not repeat the
    # warning; a later run, a new process, reports the same files again, without decoding anything.
    _, kept_again, caught = _load(mixed, data, workers=1)
    assert np.array_equal(kept, kept_again) and caught == []
    later_run = subprocess.run(
        [sys.executable, "-c", _LOAD, str(data), str(data / "cache"), *map(str, mixed)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
    )
    assert later_run.returncode == 0 and later_run.stderr.count("Left out 3 of 9") == 1, later_run.stderr
    assert "Decoding" not in later_run.stderr


_LOAD = """
import sys
from pathlib import Path
from xray_cls.data.image_cache import load_or_build_cache

root, cache, *files = sys.argv[1:]
load_or_build_cache([Path(f) for f in files], Path(root), 16, 1, Path(cache), workers=1)
"""


def test_nothing_readable_is_a_user_error(tmp_path: Path) -> None:
    bad = [write_corrupt_image(tmp_path / f"{i}.jpg") for i in range(2)]
    with pytest.raises(UserError, match="None of the 2 image files"):
        load_or_build_cache(bad, tmp_path, 16, 1, tmp_path / "cache", workers=1)
    assert not list((tmp_path / "cache").iterdir()), "a failed build left files in the cache dir"


def test_empty_file_list_and_bad_channels(tmp_path: Path) -> None:
    images, kept = load_or_build_cache([], tmp_path, 16, 3, tmp_path / "cache")
    assert images.shape == (0, 3, 16, 16) and kept.size == 0
    with pytest.raises(ValueError, match="num_channels"):
        load_or_build_cache([], tmp_path, 16, 2, tmp_path / "cache")
