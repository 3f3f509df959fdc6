"""Tests for cvdm_tf.io: atomic writes leave the old file or the new one, never a half-written one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from cvdm_tf.data.sources import read_image
from cvdm_tf.io import atomic_write, tiff_pixel_size_um, write_json, write_png, write_text, write_tiff


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# === atomic_write ===


def test_atomic_write_success_replaces(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".txt"
        assert tmp.name.startswith(".out.tmp-") and tmp.exists()
        assert target.read_text() == "old"  # nothing visible until the block ends
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert _listing(tmp_path) == ["out.txt"]


def test_atomic_write_exception_keeps_old_content_and_no_temp(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old content"
    assert _listing(tmp_path) == ["out.tif"]


def test_atomic_write_exception_on_new_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "new.json") as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_atomic_write_block_that_deletes_its_temp_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "a.txt") as tmp:
            tmp.unlink()
    assert _listing(tmp_path) == []


def test_atomic_write_onto_a_folder_fails_cleanly(tmp_path):
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(OSError):
        with atomic_write(tmp_path / "dir.txt") as tmp:
            tmp.write_text("x")
    assert _listing(tmp_path) == ["dir.txt"] and (tmp_path / "dir.txt").is_dir()


def test_atomic_write_creates_parents_and_usual_permissions(tmp_path):
    target = tmp_path / "a" / "b" / "c.txt"
    with atomic_write(target) as tmp:
        tmp.write_text("x")
    assert target.read_text() == "x"
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


# === Writers ===


@pytest.mark.parametrize("shape", [(12, 16), (12, 16, 1), (12, 16, 2), (12, 16, 3)])
def test_write_tiff_round_trip(tmp_path, rng, shape):
    array = rng.standard_normal(shape) * 100
    path = write_tiff(tmp_path / "sub" / "x.tif", array)
    assert path == tmp_path / "sub" / "x.tif"
    stored = tifffile.imread(path)
    assert stored.dtype == np.float32
    expected = array.astype(np.float32)
    expected = expected if expected.ndim == 3 else expected[..., None]
    np.testing.assert_array_equal(read_image(path), expected)
    assert _listing(path.parent) == ["x.tif"]


@pytest.mark.parametrize("shape", [(12, 16), (12, 16, 2)])
def test_write_tiff_states_the_pixel_size_channels_and_description_in_ome(tmp_path, rng, shape):
    """Read back with tifffile's own OME parser (not ours), and through the resolution tags."""
    from cvdm_tf.data.stacks import pixel_size_um

    names = ["a (rad)", "b (rad)"][:shape[-1] if len(shape) == 3 else 1]
    path = write_tiff(tmp_path / "x.tif", rng.random(shape), pixel_size_um=0.105, channels=names,
                      description="made by a test")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    pixels = image["Pixels"]
    assert pixels["PhysicalSizeX"] == pytest.approx(0.105) and pixels["PhysicalSizeY"] == pytest.approx(0.105)
    assert pixels["PhysicalSizeXUnit"] == "\u00b5m"
    assert pixels["Channel"]["Name"] == " / ".join(names)
    assert image["Description"] == "made by a test"
    assert pixel_size_um(path) == pytest.approx(0.105)
    assert tiff_pixel_size_um(path) == pytest.approx(0.105)
    with pytest.raises(ValueError, match="channel name"):
        write_tiff(tmp_path / "y.tif", rng.random(shape), channels=names + ["extra"])


def test_write_tiff_failure_keeps_previous_file(tmp_path, rng):
    path = tmp_path / "x.tif"
    write_tiff(path, np.ones((4, 4)))

    def half_write(file, data, **kwargs):
        Path(file).write_bytes(b"II*\x00partial")
        raise OSError("disk full")

    with mock.patch.object(tifffile, "imwrite", half_write):
        with pytest.raises(OSError, match="disk full"):
            write_tiff(path, rng.random((4, 4)))
    np.testing.assert_array_equal(read_image(path), np.ones((4, 4, 1), np.float32))
    assert _listing(tmp_path) == ["x.tif"]


@pytest.mark.parametrize("shape", [(10, 12), (10, 12, 1), (10, 12, 3), (10, 12, 4)])
def test_write_png_round_trip(tmp_path, rng, shape):
    array = rng.integers(0, 255, shape, dtype=np.uint8)
    path = write_png(tmp_path / "y.png", array)
    back = iio.imread(path)
    np.testing.assert_array_equal(back.reshape(array.shape), array)
    assert _listing(tmp_path) == ["y.png"]


def test_write_png_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "y.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "y.png", np.zeros((4, 4, 2), np.uint8))
    assert _listing(tmp_path) == []


def test_write_json_round_trip_with_numpy_values(tmp_path):
    obj = {"loss": np.float32(0.5), "steps": np.int64(3), "shape": np.array([2, 3]), "run": tmp_path, "ü": "µm"}
    path = write_json(tmp_path / "cfg" / "config.json", obj)
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "loss": 0.5,
        "steps": 3,
        "shape": [2, 3],
        "run": str(tmp_path),
        "ü": "µm",
    }


def test_write_json_unserialisable_writes_nothing(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"old": true}')
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert path.read_text() == '{"old": true}'
    assert _listing(tmp_path) == ["config.json"]


def test_write_text(tmp_path):
    path = write_text(tmp_path / "notes" / "log.txt", "line 1\r\nµ line 2\n")
    assert path.read_bytes() == "line 1\r\nµ line 2\n".encode("utf-8")
    write_text(path, "replaced")
    assert path.read_text() == "replaced"
    with pytest.raises(TypeError):
        write_text(path, b"bytes")
    assert path.read_text() == "replaced"
