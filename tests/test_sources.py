"""Tests for cvdm_tf.data.sources: round trips per format, every bad input -> InputError, fuzzing, sources."""

from __future__ import annotations

import io
import socket
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from unittest import mock

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvdm_tf.data import readers
from cvdm_tf.data.readers import (
    IMAGE_SUFFIXES,
    read_image,
    read_image_with_dtype,
    read_stack,
    to_grayscale,
    to_unit_range,
)
from cvdm_tf.data.sources import embedded_images, iter_source_images, list_images, split_by_image
from cvdm_tf.errors import InputError

# === Helpers ===


def _png16_colour(path: Path, array: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _expect_input_error(path, *fragments: str) -> InputError:
    with pytest.raises(InputError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return info.value


# === Round trips ===


@pytest.mark.parametrize(
    ("suffix", "shape", "dtype"),
    [
        (".png", (20, 30), np.uint8),
        (".png", (20, 30, 3), np.uint8),
        (".png", (20, 30, 4), np.uint8),
        (".png", (20, 30), np.uint16),
        (".PNG", (9, 7), np.uint8),
    ],
)
def test_png_round_trip_keeps_values(tmp_path, rng, suffix, shape, dtype):
    array = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    path = tmp_path / f"image{suffix}"
    iio.imwrite(path, array, extension=".png")
    image, source_dtype = read_image_with_dtype(path)
    expected = array if array.ndim == 3 else array[..., None]
    assert image.dtype == np.float32 and source_dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image, expected.astype(np.float32))


@pytest.mark.parametrize("shape", [(32, 48), (32, 48, 3)])
def test_jpeg_round_trip_is_close(tmp_path, shape):
    yy, xx = np.mgrid[:32, :48]
    smooth = (128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.uint8)
    array = smooth if len(shape) == 2 else np.stack([smooth, 255 - smooth, smooth // 2], axis=-1)
    for suffix in (".jpg", ".jpeg"):
        path = tmp_path / f"image{suffix}"
        iio.imwrite(path, array, extension=".jpg", quality=95)
        image, source_dtype = read_image_with_dtype(path)
        assert image.shape == (32, 48, 1 if len(shape) == 2 else 3)
        assert source_dtype == np.uint8
        assert np.abs(image - array.reshape(image.shape).astype(np.float32)).mean() < 3.0


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((24, 40), np.uint8),
        ((24, 40), np.uint16),
        ((24, 40), np.float32),
        ((24, 40), np.float64),
        ((24, 40), np.int16),
        ((24, 40, 2), np.float32),
        ((24, 40, 3), np.uint8),
    ],
)
def test_tiff_round_trip_keeps_values(tmp_path, rng, shape, dtype):
    if np.dtype(dtype).kind == "f":
        array = (rng.standard_normal(shape) * 1000).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig" if len(shape) == 3 else None)
    image, source_dtype = read_image_with_dtype(path)
    expected = array if array.ndim == 3 else array[..., None]
    assert image.dtype == np.float32 and source_dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image, expected.astype(np.float32))


def test_tiff_channels_first_is_transposed(tmp_path, rng):
    array = rng.integers(0, 65535, (3, 32, 40), dtype=np.uint16)
    path = tmp_path / "planar.TIFF"
    tifffile.imwrite(path, array, photometric="minisblack")
    image = read_image(path)
    assert image.shape == (32, 40, 3)
    np.testing.assert_array_equal(image, np.moveaxis(array, 0, -1).astype(np.float32))


def test_tiff_rgb_written_planar_is_read_channels_last(tmp_path, rng):
    array = rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, array, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(path), array.astype(np.float32))


@pytest.mark.parametrize("shape", [(10, 12), (10, 12, 1), (10, 12, 4), (2, 10, 12), (1, 10, 12, 3)])
def test_npy_round_trip(tmp_path, rng, shape):
    array = rng.standard_normal(shape)
    path = tmp_path / "image.npy"
    np.save(path, array)
    image = read_image(path)
    expected = np.squeeze(array, 0) if len(shape) == 4 else array
    expected = expected[..., None] if expected.ndim == 2 else expected
    if shape == (2, 10, 12):
        expected = np.moveaxis(array, 0, -1)
    np.testing.assert_array_equal(image, expected.astype(np.float32))


def test_npy_big_endian_and_int_dtypes(tmp_path):
    array = np.arange(30, dtype=">u2").reshape(5, 6)
    np.save(tmp_path / "be.npy", array)
    image, source_dtype = read_image_with_dtype(tmp_path / "be.npy")
    assert source_dtype == np.dtype("uint16")
    np.testing.assert_array_equal(image[..., 0], array.astype(np.float32))


def test_npz_stack_round_trip(tmp_path, rng):
    single = rng.random((16, 16)).astype(np.float32)
    stack = rng.random((6, 16, 16)).astype(np.float32)
    colour = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "stack.npz"
    np.savez_compressed(path, a=single, b=stack, c=colour)
    images = read_stack(path)
    assert len(images) == 1 + 6 + 2
    np.testing.assert_array_equal(images[0][..., 0], single)
    for i in range(6):
        np.testing.assert_array_equal(images[1 + i][..., 0], stack[i])
    np.testing.assert_array_equal(images[7], colour[0].astype(np.float32))
    assert all(im.dtype == np.float32 and im.ndim == 3 for im in images)


def test_npz_with_one_image_reads_as_image(tmp_path, rng):
    array = rng.random((8, 9))
    np.savez(tmp_path / "one.npz", array)
    np.testing.assert_array_equal(read_image(tmp_path / "one.npz")[..., 0], array.astype(np.float32))


@pytest.mark.parametrize(
    ("shape", "count", "channels"),
    [((6, 10, 12), 6, 1), ((3, 10, 12, 2), 3, 2), ((3, 2, 10, 12), 3, 2), ((10, 12), 1, 1), ((10, 12, 3), 1, 3)],
)
def test_read_stack_npy_and_tiff(tmp_path, rng, shape, count, channels):
    array = rng.integers(0, 4000, shape, dtype=np.uint16)
    np.save(tmp_path / "s.npy", array)
    tifffile.imwrite(tmp_path / "s.tif", array, photometric="minisblack")
    for name in ("s.npy", "s.tif"):
        images = read_stack(tmp_path / name)
        assert len(images) == count
        assert all(im.shape == (10, 12, channels) for im in images)
    if len(shape) == 3 and count > 1:
        np.testing.assert_array_equal(images[2][..., 0], array[2].astype(np.float32))


def test_content_decides_format_not_suffix(tmp_path, rng):
    array = rng.integers(0, 255, (8, 8), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", array)
    (tmp_path / "misnamed.tif").write_bytes((tmp_path / "a.png").read_bytes())
    np.testing.assert_array_equal(read_image(tmp_path / "misnamed.tif")[..., 0], array)


def test_one_bit_png_reads_as_0_255(tmp_path):
    from PIL import Image

    Image.fromarray(np.eye(8, dtype=bool)).save(tmp_path / "bits.png")
    image, source_dtype = read_image_with_dtype(tmp_path / "bits.png")
    assert source_dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], np.eye(8) * 255)


def test_tifffile_logger_is_restored(tmp_path, rng):
    import logging

    logger = logging.getLogger("tifffile")
    before = (logger.propagate, list(logger.handlers))
    tifffile.imwrite(tmp_path / "a.tif", rng.random((8, 8)).astype(np.float32))
    read_image(tmp_path / "a.tif")
    assert (logger.propagate, list(logger.handlers)) == before


# === Bad inputs ===


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_not_an_image_with_image_suffix(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_bytes(b"this is a text file, not an image\n" * 20)
    _expect_input_error(path, "not a readable image")


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    _expect_input_error(path, "empty file")


def test_truncated_png(tmp_path, rng):
    path = tmp_path / "cut.png"
    iio.imwrite(path, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_input_error(path, "not a readable image", "PNG")


def test_truncated_jpeg(tmp_path, rng):
    path = tmp_path / "cut.jpg"
    iio.imwrite(path, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), extension=".jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_input_error(path, "not a readable image", "JPEG")


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((64, 64), {}),
        ((64, 64), {"compression": "zlib"}),
        ((5, 64, 64), {}),
        ((5, 64, 64), {"tile": (16, 16)}),
        ((5, 64, 64), {"compression": "zlib"}),
    ],
)
@pytest.mark.parametrize("keep", [0.3, 0.5, 0.9])
def test_truncated_tiff(tmp_path, rng, shape, options, keep):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, rng.random(shape).astype(np.float32), **options)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError) as info:
        read_stack(path)  # read_stack: a multi-page file must not come back with its pages silently missing
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    _expect_input_error(path)


def test_truncated_npy(tmp_path, rng):
    path = tmp_path / "cut.npy"
    np.save(path, rng.random((32, 32)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_input_error(path, "truncated or corrupt NPY")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_pixels(tmp_path, rng, bad):
    array = rng.random((8, 8)).astype(np.float32)
    array[3, 4] = bad
    np.save(tmp_path / "x.npy", array)
    tifffile.imwrite(tmp_path / "x.tif", array)
    _expect_input_error(tmp_path / "x.npy", "contains NaN or Inf pixels")
    _expect_input_error(tmp_path / "x.tif", "contains NaN or Inf pixels")


def test_float64_beyond_float32_range(tmp_path):
    np.save(tmp_path / "big.npy", np.full((4, 4), 1e300))
    _expect_input_error(tmp_path / "big.npy", "float32 range")


@pytest.mark.parametrize(
    ("array", "dtype_name"),
    [
        (np.ones((4, 4), np.complex128), "complex128"),
        (np.ones((4, 4), bool), "bool"),
        (np.array([["a", "b"], ["c", "d"]]), "<U1"),
        (np.zeros((2, 2), dtype=[("r", "u1"), ("g", "u1")]), "("),
    ],
)
def test_unsupported_dtypes(tmp_path, array, dtype_name):
    np.save(tmp_path / "x.npy", array)
    _expect_input_error(tmp_path / "x.npy", "unsupported pixel type", dtype_name)


def test_object_dtype(tmp_path):
    array = np.empty((2, 2), dtype=object)
    array[:] = 1
    np.save(tmp_path / "obj.npy", array, allow_pickle=True)
    _expect_input_error(tmp_path / "obj.npy", "unsupported pixel type object")


def test_complex_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.ones((8, 8), np.complex64))
    _expect_input_error(tmp_path / "c.tif", "complex64")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 3, 8, 8, 1), (0, 5), (5, 0, 3)])
def test_bad_shapes_in_npy(tmp_path, shape):
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    error = _expect_input_error(tmp_path / "x.npy")
    assert str(shape) in str(error) or "empty image" in str(error)


def test_stack_passed_as_one_image(tmp_path, rng):
    np.save(tmp_path / "stack.npy", rng.random((6, 10, 10)))
    _expect_input_error(tmp_path / "stack.npy", "stack of 6 images")
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 4)), b=np.ones((4, 4)))
    _expect_input_error(tmp_path / "two.npz", "2 arrays")


def test_npz_with_object_member(tmp_path):
    array = np.empty((2, 2), dtype=object)
    np.savez(tmp_path / "obj.npz", good=np.zeros((4, 4)), bad=array)
    with pytest.raises(InputError, match=r"obj\.npz \[bad\]: unsupported pixel type object"):
        read_stack(tmp_path / "obj.npz")


def test_sixteen_bit_colour_png_is_refused_not_reduced(tmp_path, rng):
    path = tmp_path / "rgb16.png"
    _png16_colour(path, rng.integers(0, 65535, (5, 6, 3), dtype=np.uint16))
    _expect_input_error(path, "16-bit colour PNG")


def test_directory_missing_and_unknown_suffix(tmp_path):
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    _expect_input_error(folder, "is a folder")
    _expect_input_error(tmp_path / "missing.png", "no such file")
    (tmp_path / "image.bmp").write_bytes(b"BM" + bytes(100))
    _expect_input_error(tmp_path / "image.bmp", "unsupported file type .bmp")


def test_absurd_size_is_refused_before_allocating(tmp_path, rng):
    tifffile.imwrite(tmp_path / "a.tif", rng.random((64, 64)).astype(np.float32))
    with mock.patch.object(readers, "_max_decoded_bytes", return_value=1000):
        _expect_input_error(tmp_path / "a.tif", "too large")


def test_absurd_npy_header(tmp_path):
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    (tmp_path / "huge.npy").write_bytes(buffer.getvalue() + bytes(64))
    _expect_input_error(tmp_path / "huge.npy", "truncated or corrupt NPY")


# === Fuzzing: whatever the bytes, a finite [H, W, C] float32 image or an InputError ===


def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    seeds = {}
    buffers = {
        "png8": (rng.integers(0, 255, (12, 10, 3), dtype=np.uint8), ".png"),
        "png16": (rng.integers(0, 65535, (12, 10), dtype=np.uint16), ".png"),
        "jpeg": (rng.integers(0, 255, (16, 16), dtype=np.uint8), ".jpg"),
    }
    for key, (array, ext) in buffers.items():
        seeds[key] = iio.imwrite("<bytes>", array, extension=ext)
    for key, array, options in [
        ("tif16", rng.integers(0, 65535, (12, 10), dtype=np.uint16), {}),
        ("tif32z", rng.random((3, 12, 10)).astype(np.float32), {"compression": "zlib"}),
        ("tifstack", rng.random((6, 8, 8)).astype(np.float32), {"tile": (16, 16)}),
    ]:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array, **options)
        seeds[key] = buffer.getvalue()
    buffer = io.BytesIO()
    np.save(buffer, rng.random((12, 10, 2)))
    seeds["npy"] = buffer.getvalue()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a=rng.random((12, 10)))
    seeds["npz"] = buffer.getvalue()
    return seeds


_SEEDS = _seed_files()


@st.composite
def _file_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "truncate", "flip", "insert"]))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=512))
    data = bytearray(_SEEDS[draw(st.sampled_from(sorted(_SEEDS)))])
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    position = draw(st.integers(0, len(data)))
    return bytes(data[:position]) + draw(st.binary(min_size=1, max_size=32)) + bytes(data[position:])


def test_a_tiff_whose_directory_chain_loops_is_refused_not_followed(tmp_path):
    """A TIFF whose image directory points to itself as the next one (found by the fuzz test below: tifffile
    follows such a chain without end, memory growing) is refused in one line, by the image, z-stack and BioSR
    readers alike."""
    from cvdm_tf.data import biosr_files, stacks

    path = tmp_path / "loop.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8))
    data = bytearray(path.read_bytes())
    first = struct.unpack("<I", data[4:8])[0]
    entries = struct.unpack("<H", data[first:first + 2])[0]
    next_offset = first + 2 + 12 * entries
    assert struct.unpack("<I", data[next_offset:next_offset + 4])[0] == 0  # one directory, the chain's end
    data[next_offset:next_offset + 4] = struct.pack("<I", first)
    path.write_bytes(bytes(data))
    for read in (read_image, stacks.read_stack, biosr_files._header_shape):
        with pytest.raises(InputError, match="a chain that loops") as error:
            read(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


_FUZZ_DIR = tempfile.TemporaryDirectory(prefix="cvdm-fuzz-")


# Derandomized: CI draws the same 600 files every run (a random draw found the looping TIFF above; to search
# again, run with --hypothesis-seed=N and derandomize off).
@settings(max_examples=600, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=_file_bytes(), suffix=st.sampled_from(IMAGE_SUFFIXES))
def test_fuzz_read_image_returns_image_or_input_error(data, suffix):
    path = Path(_FUZZ_DIR.name) / f"fuzz{suffix}"
    path.write_bytes(data)
    # A small size cap keeps a forged header from making the test allocate gigabytes.
    with mock.patch.object(readers, "_max_decoded_bytes", return_value=64 << 20):
        try:
            image = read_image(path)
        except InputError as error:
            assert str(path) in str(error) and "\n" not in str(error)
            return
    assert isinstance(image, np.ndarray) and image.dtype == np.float32
    assert image.ndim == 3 and image.shape[0] >= 1 and image.shape[1] >= 1 and 1 <= image.shape[2] <= 4
    assert np.isfinite(image).all()


# === Pixel values ===


def test_to_unit_range_integer_by_dtype_max():
    np.testing.assert_allclose(to_unit_range(np.array([0, 51, 255], np.uint8)), [0, 0.2, 1])
    as_float = np.array([0.0, 65535.0], np.float32)
    np.testing.assert_allclose(to_unit_range(as_float, np.uint16), [0, 1])
    np.testing.assert_allclose(to_unit_range(np.array([4095.0], np.float32), "uint16"), [4095 / 65535], rtol=1e-6)
    np.testing.assert_allclose(to_unit_range(np.array([-5, 32767], np.int16)), [0, 1])


def test_to_unit_range_float_by_min_max_and_constant():
    result = to_unit_range(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, [[0, 0.25], [0.5, 1]])
    np.testing.assert_array_equal(to_unit_range(np.full((3, 3, 1), 7.0, np.float32)), np.zeros((3, 3, 1)))


def test_to_grayscale():
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    grey = to_grayscale(rgb)
    assert grey.shape == (2, 2, 1) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, 0.2125 * 100 + 0.7154 * 200 + 0.0721 * 50, rtol=1e-6)
    rgba = np.concatenate([rgb, np.full((2, 2, 1), 9.0, np.float32)], axis=-1)
    np.testing.assert_array_equal(to_grayscale(rgba), grey)
    two = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)], axis=-1)
    np.testing.assert_array_equal(to_grayscale(two), np.full((2, 2, 1), 2.0))
    one = np.arange(4, dtype=np.float32).reshape(2, 2, 1)
    np.testing.assert_array_equal(to_grayscale(one), one)
    np.testing.assert_array_equal(to_grayscale(one[..., 0]), one)


# === Folders and sources ===


def _make_tree(root: Path, rng) -> None:
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    iio.imwrite(root / "sub" / "cell1.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    iio.imwrite(root / "a.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    tifffile.imwrite(root / "A.TIF", rng.random((8, 8)).astype(np.float32))
    np.save(root / "stack.npy", rng.integers(0, 4000, (6, 8, 8), dtype=np.uint16))
    np.save(root / ".secret.npy", np.zeros((8, 8)))
    np.save(root / ".hidden" / "x.npy", np.zeros((8, 8)))
    (root / "notes.txt").write_text("not an image")


def test_list_images_recursive_sorted_skips_hidden(tmp_path, rng):
    _make_tree(tmp_path, rng)
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["A.TIF", "a.png", "stack.npy", "sub/cell1.png"]
    assert all(p.is_absolute() == tmp_path.is_absolute() for p in list_images(tmp_path))


def test_list_images_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        list_images(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(InputError, match="not a folder"):
        list_images(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as info:
        list_images(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    assert "no images found (looked for .png .jpg .jpeg .tif .tiff .npy .npz)" in str(info.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("hi")
    (tmp_path / "other" / ".hidden.png").write_bytes(b"x")
    with pytest.raises(InputError, match="no images found"):
        list_images(tmp_path / "other")


def test_iter_source_images_folder(tmp_path, rng):
    _make_tree(tmp_path, rng)
    items = iter_source_images(tmp_path)
    names = [name for name, _ in items]
    assert names == ["A", "a-2", *[f"stack_{i:03d}" for i in range(6)], "sub_cell1"]
    assert len({n.lower() for n in names}) == len(names)
    assert all(im.dtype == np.float32 and im.shape == (8, 8, 1) for _, im in items)
    assert [n for n, _ in iter_source_images(tmp_path)] == names  # stable
    with_dtype = iter_source_images(tmp_path, with_dtype=True)
    assert [d for _, _, d in with_dtype][:3] == [np.dtype("float32"), np.dtype("uint8"), np.dtype("uint16")]


def test_iter_source_images_single_files(tmp_path, rng):
    np.save(tmp_path / "one.npy", rng.random((8, 8)))
    assert [n for n, _ in iter_source_images(tmp_path / "one.npy")] == ["one"]
    np.save(tmp_path / "many.npy", rng.random((5, 8, 8, 1)))
    assert [n for n, _ in iter_source_images(tmp_path / "many.npy")] == [f"many_{i:03d}" for i in range(5)]
    with pytest.raises(InputError, match="no such file or folder"):
        iter_source_images(tmp_path / "nope")


def test_iter_source_images_bad_file_in_folder_names_it(tmp_path, rng):
    iio.imwrite(tmp_path / "good.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    (tmp_path / "bad.tif").write_bytes(b"garbage" * 10)
    with pytest.raises(InputError, match=r"bad\.tif: not a readable image"):
        iter_source_images(tmp_path)


def test_embedded_images_need_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("embedded_images tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setitem(sys.modules, "pooch", None)  # importing pooch now fails
    images = embedded_images()
    assert len(images) >= 5
    names = [name for name, _ in images]
    assert len(set(names)) == len(names) and names[:3] == ["astronaut", "brick", "camera"]
    for _, image in images:
        assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 1
        assert min(image.shape[:2]) >= 256
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > image.min()
    assert [n for n, _ in embedded_images()] == names


def test_split_by_image_whole_images_and_deterministic():
    items = [(f"img{i}", np.full((4, 4, 1), i, np.float32)) for i in range(10)]
    train, val = split_by_image(items, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert {id(x) for x in train} | {id(x) for x in val} == {id(x) for x in items}
    assert not {id(x) for x in train} & {id(x) for x in val}
    again = split_by_image(items, 0.2, seed=3)
    assert [n for n, _ in again[1]] == [n for n, _ in val]
    assert [n for n, _ in train] == sorted((n for n, _ in train), key=lambda n: int(n[3:]))
    splits = {tuple(n for n, _ in split_by_image(items, 0.2, seed=s)[1]) for s in range(10)}
    assert len(splits) > 1


@pytest.mark.parametrize("n", range(2, 8))
@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_split_by_image_keeps_one_in_each(n, fraction):
    train, val = split_by_image(list(range(n)), fraction, seed=0)
    assert len(train) >= 1 and len(val) >= 1 and sorted(train + val) == list(range(n))


def test_split_by_image_edge_cases():
    assert split_by_image([1], 0.5, seed=0) == ([1], [])
    assert split_by_image([], 0.5, seed=0) == ([], [])
    assert split_by_image([1, 2, 3], 0.0, seed=0) == ([1, 2, 3], [])
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(InputError, match="validation_fraction"):
            split_by_image([1, 2], bad, seed=0)
