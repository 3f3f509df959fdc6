"""Reading one image file: PNG, JPEG, TIFF (8/16-bit, float, stacks), NPY and NPZ, validated.

Every reader returns ``float32`` arrays shaped ``[H, W, C]`` (``C >= 1``) with the pixel values of the file
unchanged, and turns *any* failure (missing file, corrupt or truncated data, NaN pixels, odd dtypes, absurd
headers) into one :class:`~cvdm_tf.errors.InputError` whose message starts with the path and says what is wrong,
so the command line can print it as one line.

Axis rule (the same everywhere; a 2-D array is one image with ``C = 1``). A 3-D array of shape ``(a, b, c)`` is

1. ``c <= 4``: one image ``H x W x C`` (grey, grey+channel, RGB, RGBA, ...);
2. ``a <= 4 < c``: one image ``C x H x W`` (planar TIFFs, ImageJ channel stacks), transposed to ``H x W x C``;
3. ``a > 4`` and ``c > 4``: a stack of ``a`` grey images ``H x W`` (z-stacks, time series).

So an image has at most 4 channels. A 4-D array is a stack ``N x H x W x C`` or ``N x C x H x W`` (each
``[i]`` follows rules 1-2). Leading axes of length 1 beyond those dimensions are dropped. :func:`read_image` wants
one image and rejects stacks; :func:`read_stack` and :func:`iter_source_images` expand them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from cvdm_tf.errors import InputError

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_image_with_dtype", "read_stack", "read_stack_with_dtype",
           "to_unit_range", "to_grayscale"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz")

_MAX_CHANNELS = 4
_SUFFIX_LIST = " ".join(IMAGE_SUFFIXES)

# File signatures: the content decides the reader, so a PNG saved as ``.tif`` still reads.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"\x93NUMPY", "npy"),
    (b"PK\x03\x04", "npz"),
    (b"PK\x05\x06", "npz"),
)
_FORMAT_BY_SUFFIX = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".npz": "npz",
}
_FORMAT_NAME = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "npy": "NPY", "npz": "NPZ"}

# tifffile reports many kinds of damage (truncated IFD chains, short strips) only through its logger and
# then returns whatever it could read; these messages mean the pixel data is incomplete.
_TIFF_DAMAGE = (
    "invalid page offset",
    "invalid offset to",
    "circular reference",
    "corrupted",
    "failed to reshape",
    "failed to read",
    "incorrect strip",
    "missing data",
    "missing bytecounts",
    "missing required tags",
    "incompletely written",
    "suspicious number of tags",
    "truncat",
)


# === Reading one file ===


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as ``float32 [H, W, C]`` with its pixel values unchanged.

    Args:
        path: str or path-like. A ``.png``, ``.jpg``/``.jpeg``, ``.tif``/``.tiff`` (8/16/32-bit integer or
            float, multi-channel ``H x W x C`` or ``C x H x W``, see the module's axis rule), ``.npy`` holding
            one 2-D or 3-D array, or ``.npz`` holding exactly one image.

    Returns:
        np.ndarray: ``float32``, shape ``[H, W, C]`` with ``C`` in 1..4, finite values as stored in the file.

    Raises:
        InputError: the file is missing, a folder, of an unknown type, not an image, truncated or corrupt,
            empty, a stack rather than one image, of a non-numeric or complex dtype, or has NaN/Inf pixels.
            The message starts with ``path``.

    Example:
        >>> image = read_image("data/cell.tif")  # doctest: +SKIP
        >>> image.shape, image.dtype  # doctest: +SKIP
        ((512, 512, 1), dtype('float32'))
    """
    return read_image_with_dtype(path)[0]


def read_image_with_dtype(path: str | os.PathLike) -> tuple[np.ndarray, np.dtype]:
    """Like :func:`read_image`, and also return the dtype the pixels had in the file.

    The dtype is what :func:`to_unit_range` needs to scale integer images by their bit depth (a 16-bit image
    is divided by 65535, not by its own maximum). One-bit images (1-bit PNG or TIFF) are read as ``uint8``
    0 / 255.

    Args:
        path: str or path-like. See :func:`read_image`.

    Returns:
        tuple: ``(image, source_dtype)``; ``image`` is ``float32 [H, W, C]``, ``source_dtype`` a native-order
        ``np.dtype`` such as ``uint8``, ``uint16`` or ``float32``.

    Raises:
        InputError: see :func:`read_image`.
    """
    path, name = _checked_file(path)
    images = _decode(path, name)
    if len(images) != 1:
        raise InputError(f"{name}: holds {len(images)} arrays (an .npz archive); expected exactly one image")
    label, raw = images[0]
    return _finish(_as_image(raw, name, label), name, label)


def read_stack(path: str | os.PathLike) -> list[np.ndarray]:
    """Read a file that holds one image or a stack of images as a list of ``float32 [H, W, C]`` images.

    Args:
        path: str or path-like. A ``.npy`` or TIFF with a 2-D image, a 3-D image or stack, or a 4-D stack
            ``N x H x W x C`` / ``N x C x H x W``; a ``.npz`` whose arrays are images or stacks (expanded in
            the archive's order); or a PNG/JPEG (a list of one). A 3-D array is a stack of grey images when
            both its first and last axes are longer than 4, otherwise one image (the module's axis rule).

    Returns:
        list of np.ndarray: ``float32 [H, W, C]`` images, values unchanged.

    Raises:
        InputError: as :func:`read_image`, or for arrays that are neither an image nor a stack.
    """
    return [image for image, _ in read_stack_with_dtype(path)]


def read_stack_with_dtype(path: str | os.PathLike) -> list[tuple[np.ndarray, np.dtype]]:
    """Like :func:`read_stack`, with each image's source dtype (see :func:`read_image_with_dtype`).

    Args:
        path: str or path-like. See :func:`read_stack`.

    Returns:
        list of tuple: ``(image float32 [H, W, C], source_dtype)`` per image.

    Raises:
        InputError: see :func:`read_stack`.
    """
    path, name = _checked_file(path)
    out = []
    for label, raw in _decode(path, name):
        for image in _as_images(raw, name, label):
            out.append(_finish(image, name, label))
    if not out:
        raise InputError(f"{name}: holds no images")
    return out


# === Pixel values ===


def to_unit_range(array: np.ndarray, source_dtype: Any = None) -> np.ndarray:
    """Map an image to ``[0, 1]`` as ``float32``.

    Integer images are divided by their dtype's maximum (``uint8`` by 255, ``uint16`` by 65535, so a 12-bit
    camera image in a 16-bit file ends near 0.06 and brightness stays comparable across files); values below
    0 (signed dtypes) clip to 0. Float images are stretched by their own minimum and maximum; a constant float
    image becomes zeros.

    Args:
        array: np.ndarray. The image, any shape.
        source_dtype: np.dtype-like or None. The dtype the pixels had in the file (from
            :func:`read_image_with_dtype`); ``None`` uses ``array.dtype``.

    Returns:
        np.ndarray: ``float32``, same shape, values in ``[0, 1]``.
    """
    array = np.asarray(array)
    dtype = np.dtype(array.dtype if source_dtype is None else source_dtype)
    values = array.astype(np.float32, copy=True)
    if dtype.kind == "b":
        return np.clip(values, 0.0, 1.0)
    if dtype.kind in "ui":
        values /= np.float32(np.iinfo(dtype).max)
        return np.clip(values, 0.0, 1.0, out=values)
    if values.size == 0:
        return values
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros_like(values)
    # In float64 so that a huge range does not overflow before the division.
    return ((values.astype(np.float64) - low) / (high - low)).astype(np.float32)


def to_grayscale(array: np.ndarray) -> np.ndarray:
    """Reduce an image to one channel, ``[H, W, 1]`` ``float32``.

    RGB and RGBA become luminance with :func:`skimage.color.rgb2gray` weights (0.2125 R + 0.7154 G + 0.0721 B;
    alpha is dropped); one channel is returned as is; other channel counts (two fluorescence channels, say)
    are averaged. Values keep their scale (no rescaling).

    Args:
        array: np.ndarray. ``[H, W]`` or ``[H, W, C]``.

    Returns:
        np.ndarray: ``float32 [H, W, 1]``.
    """
    from skimage.color import rgb2gray

    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        return array[..., None].copy()
    if array.ndim != 3:
        raise ValueError(f"to_grayscale expects [H, W] or [H, W, C], got shape {array.shape}")
    channels = array.shape[-1]
    if channels == 1:
        return array.copy()
    if channels in (3, 4):
        return rgb2gray(array[..., :3], channel_axis=-1).astype(np.float32)[..., None]
    return array.mean(axis=-1, keepdims=True, dtype=np.float32)


# === Internals: checks ===


def _checked_file(path: str | os.PathLike) -> tuple[Path, str]:
    """Return ``(Path, name as the user wrote it)`` after the checks that need no decoding."""
    try:
        name = os.fspath(path)
        p = Path(path)
    except TypeError as exc:
        raise InputError(f"{path!r}: not a file path ({exc})") from exc
    if not p.exists():
        raise InputError(f"{name}: no such file")
    if p.is_dir():
        raise InputError(f"{name}: is a folder, not an image file")
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        suffix = p.suffix or "(no suffix)"
        raise InputError(f"{name}: unsupported file type {suffix} (expected one of {_SUFFIX_LIST})")
    if not p.is_file():
        raise InputError(f"{name}: not a regular file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({_reason(exc)})") from exc
    if size == 0:
        raise InputError(f"{name}: empty file (0 bytes)")
    return p, name


def _max_decoded_bytes() -> int:
    """A decoded image may use at most a quarter of this machine's memory (guards against forged headers)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _check_size(name: str, shape: tuple, dtype: np.dtype) -> None:
    """Reject declared shapes whose float32 copy would not fit in memory, before allocating anything."""
    count = 1
    for dim in shape:
        count *= int(dim)
    nbytes = count * max(np.dtype(dtype).itemsize, 4)
    limit = _max_decoded_bytes()
    if nbytes > limit:
        raise InputError(
            f"{name}: image too large to load ({tuple(int(d) for d in shape)} {np.dtype(dtype)}, "
            f"{nbytes / 2**30:.1f} GiB as float32; limit {limit / 2**30:.1f} GiB)"
        )


def _reason(exc: BaseException) -> str:
    """One line describing an exception, for a message."""
    text = " ".join(str(exc).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _where(name: str, label: str | None) -> str:
    return f"{name} [{label}]" if label else name


# === Internals: decoding ===


def _sniff(path: Path) -> str:
    """The file's format from its first bytes, else from its suffix."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return _FORMAT_BY_SUFFIX[path.suffix.lower()]


def _decode(path: Path, name: str) -> list[tuple[str | None, np.ndarray]]:
    """Decode a file into raw arrays ``(label, array)``; labels name ``.npz`` members, else ``None``."""
    fmt = "file"
    try:
        fmt = _sniff(path)
        if fmt in ("png", "jpeg"):
            return [(None, _decode_pillow(path, name))]
        if fmt == "tiff":
            return [(None, _decode_tiff(path, name))]
        if fmt == "npy":
            return [(None, _decode_npy(path, name))]
        return _decode_npz(path, name)
    except InputError:
        raise
    except MemoryError as exc:
        raise InputError(f"{name}: not a readable image (out of memory decoding it: {_reason(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - any failure of a third-party decoder is bad input
        kind = _FORMAT_NAME.get(fmt, fmt)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise InputError(f"{name}: cannot read ({_reason(exc)})") from exc
        raise InputError(f"{name}: not a readable image (truncated or corrupt {kind}: {_reason(exc)})") from exc


def _decode_pillow(path: Path, name: str) -> np.ndarray:
    """PNG / JPEG through imageio's Pillow plugin (what scikit-image uses), converting modes Pillow keeps odd."""
    import imageio.v3 as iio
    from PIL import Image

    with open(path, "rb") as fh:
        header = fh.read(26)
    if header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR" and len(header) >= 26:
        bit_depth, colour_type = header[24], header[25]
        if bit_depth == 16 and colour_type in (2, 4, 6):
            raise InputError(
                f"{name}: 16-bit colour PNG is not supported (it would be read as 8 bits); save it as a "
                "16-bit TIFF"
            )
    with Image.open(path) as peek:
        mode = peek.mode
        _check_size(name, (peek.height, peek.width, len(peek.getbands())), np.uint8)
    convert_to = {
        "1": "L",  # bilevel -> 0 / 255
        "LA": "L",  # grey + alpha: the alpha is not an intensity
        "La": "L",
        "PA": "RGBA",
        "RGBa": "RGBA",
        "CMYK": "RGB",
        "YCbCr": "RGB",
        "LAB": "RGB",
        "HSV": "RGB",
    }.get(mode)
    array = iio.imread(path, plugin="pillow", index=0, mode=convert_to)
    return np.asarray(array)


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def check_tiff_directories(tif, name: str) -> None:
    """Refuse a TIFF whose chain of image directories is longer than the file can hold: a damaged or forged file
    can chain a directory to itself, and tifffile follows such a chain without end (and without bound on memory).
    Every directory takes at least 18 bytes (an entry count, one 12-byte entry and the next offset)."""
    size = tif.filehandle.size
    limit = max(1, size // 18)
    for count, _ in enumerate(tif.pages, 1):
        if count > limit:
            raise InputError(f"{name}: not a readable image (corrupt TIFF: more image directories than its {size} "
                             "bytes can hold, a chain that loops)")


def _decode_tiff(path: Path, name: str) -> np.ndarray:
    """The first series of a TIFF (full resolution), refusing truncated or damaged pixel data."""
    import tifffile

    logger = logging.getLogger("tifffile")
    collector = _LogCollector()
    propagate = logger.propagate
    logger.addHandler(collector)
    logger.propagate = False  # tifffile's warnings become part of our message instead of console noise
    try:
        with tifffile.TiffFile(path) as tif:
            size = tif.filehandle.size
            check_tiff_directories(tif, name)
            if not tif.series:
                raise InputError(f"{name}: not a readable image (TIFF holds no image data)")
            series = tif.series[0]
            _check_size(name, series.shape, series.dtype)
            for page in series.pages:
                if page is None:
                    continue
                ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
                if ends and max(ends) > size:
                    raise InputError(
                        f"{name}: not a readable image (truncated or corrupt TIFF: pixel data ends at byte "
                        f"{max(ends)} of a {size}-byte file)"
                    )
            array = series.asarray()
            expected = tuple(series.shape)
    finally:
        logger.removeHandler(collector)
        logger.propagate = propagate
    for record in collector.records:
        message = " ".join(record.getMessage().split())
        if record.levelno >= logging.ERROR or any(k in message.lower() for k in _TIFF_DAMAGE):
            raise InputError(f"{name}: not a readable image (truncated or corrupt TIFF: {message[:160]})")
    if tuple(array.shape) != expected:
        raise InputError(
            f"{name}: not a readable image (truncated or corrupt TIFF: read shape {array.shape}, "
            f"expected {expected})"
        )
    if array.dtype == np.bool_:  # bilevel TIFF -> 0 / 255 like a 1-bit PNG
        array = array.astype(np.uint8) * np.uint8(255)
    return array


def _read_npy_header(fh, name: str, available: int) -> tuple[tuple, np.dtype]:
    """Parse and check an .npy header from an open binary file; ``available`` bytes remain after its start."""
    from numpy.lib import format as npformat

    start = fh.tell()
    version = npformat.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = npformat.read_array_header_1_0(fh)
    else:
        shape, fortran, dtype = npformat.read_array_header_2_0(fh)
    del fortran
    _check_dtype(name, dtype)
    count = 1
    for dim in shape:
        count *= int(dim)
    data_bytes = count * dtype.itemsize
    header_bytes = fh.tell() - start
    if data_bytes > available - header_bytes:
        raise InputError(
            f"{name}: not a readable image (truncated or corrupt NPY: header promises {data_bytes} bytes of "
            f"{shape} {dtype}, file has {available - header_bytes})"
        )
    _check_size(name, shape, dtype)
    return shape, dtype


def _decode_npy(path: Path, name: str) -> np.ndarray:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        _read_npy_header(fh, name, size)
        fh.seek(0)
        array = np.load(fh, allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise InputError(f"{name}: not a readable image (not a single NumPy array)")
    return array


def _decode_npz(path: Path, name: str) -> list[tuple[str | None, np.ndarray]]:
    out = []
    with np.load(path, allow_pickle=False) as archive:
        if not hasattr(archive, "files"):
            raise InputError(f"{name}: not a readable image (not an .npz archive)")
        for key in archive.files:
            member = key + ".npy" if key + ".npy" in archive.zip.namelist() else key
            info = archive.zip.getinfo(member)
            with archive.zip.open(member) as fh:
                _read_npy_header(fh, f"{name} [{key}]", info.file_size)
            out.append((key, archive[key]))
    if not out:
        raise InputError(f"{name}: holds no arrays (empty .npz archive)")
    return out


# === Internals: shapes and values ===


def _check_dtype(name: str, dtype: np.dtype) -> None:
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif" or dtype.fields is not None:
        raise InputError(
            f"{name}: unsupported pixel type {dtype} (expected integer or floating-point values, "
            "not complex, boolean, text or objects)"
        )


def _drop_leading_ones(array: np.ndarray, max_ndim: int) -> np.ndarray:
    while array.ndim > max_ndim and array.shape[0] == 1:
        array = array[0]
    return array


def _is_stack_3d(shape: tuple) -> bool:
    return shape[0] > _MAX_CHANNELS and shape[-1] > _MAX_CHANNELS


def _as_image(raw: np.ndarray, name: str, label: str | None) -> np.ndarray:
    """One raw array -> ``[H, W, C]`` by the module's axis rule (rules 1 and 2)."""
    where = _where(name, label)
    _check_dtype(where, raw.dtype)
    array = _drop_leading_ones(raw, 3)
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3:
        if array.shape[-1] > _MAX_CHANNELS and array.shape[0] <= _MAX_CHANNELS:
            array = np.moveaxis(array, 0, -1)
        elif array.shape[-1] > _MAX_CHANNELS:
            raise InputError(
                f"{where}: holds a stack of {array.shape[0]} images of {array.shape[1]} x {array.shape[2]} px "
                f"(array shape {array.shape}); expected one image (pass it where stacks are accepted)"
            )
    else:
        raise InputError(f"{where}: expected one 2-D or 3-D image, got a {raw.ndim}-D array of shape {raw.shape}")
    return array


def _as_images(raw: np.ndarray, name: str, label: str | None) -> list[np.ndarray]:
    """One raw array -> a list of ``[H, W, C]`` images (rule 3 and 4-D stacks expand)."""
    where = _where(name, label)
    _check_dtype(where, raw.dtype)
    array = _drop_leading_ones(raw, 4)
    if array.ndim == 3 and _is_stack_3d(array.shape):
        return [frame[..., None] for frame in array]
    if array.ndim == 4:
        if _is_stack_3d(array.shape[1:]):
            raise InputError(
                f"{where}: 4-D array of shape {array.shape} is not a stack N x H x W x C or N x C x H x W "
                f"(C <= {_MAX_CHANNELS})"
            )
        return [_as_image(frame, name, label) for frame in array]
    if array.ndim > 4:
        raise InputError(f"{where}: expected an image or a stack (2-D to 4-D), got shape {raw.shape}")
    return [_as_image(array, name, label)]


def _finish(image: np.ndarray, name: str, label: str | None) -> tuple[np.ndarray, np.dtype]:
    """Check size and values of an ``[H, W, C]`` image and return ``(float32 copy, native source dtype)``."""
    where = _where(name, label)
    if image.size == 0:
        raise InputError(f"{where}: empty image (array shape {image.shape})")
    source_dtype = image.dtype.newbyteorder("=")
    if image.dtype.kind == "f":
        nan = int(np.count_nonzero(np.isnan(image)))
        inf = int(np.count_nonzero(np.isinf(image)))
        if nan or inf:
            raise InputError(f"{where}: contains NaN or Inf pixels ({nan} NaN, {inf} Inf of {image.size})")
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, reported just below
        result = np.array(image, dtype=np.float32, copy=True, order="C")
    if image.dtype.kind == "f" and image.dtype.itemsize > 4 and not np.isfinite(result).all():
        raise InputError(f"{where}: pixel values exceed the float32 range (about 3.4e38)")
    return result, source_dtype
