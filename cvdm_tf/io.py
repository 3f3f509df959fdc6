"""Writing outputs so that nothing is half-written.

Every writer goes through :func:`atomic_write`: the data lands in a hidden temporary file next to the target
and is renamed onto it (``os.replace``, atomic on POSIX and Windows) only once it is complete. A crash, an
exception or Ctrl-C leaves either the old file or the new one, never a truncated one, and no temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["atomic_write", "write_tiff", "write_png", "write_json", "write_text"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; it replaces ``path`` when the block succeeds.

    The temporary file lies in the same folder (so the final rename never crosses file systems), keeps the
    suffix (so writers that pick a format by suffix still work) and is hidden: ``out.tif`` is written as
    ``.out.tmp-XXXXXXXX.tif``. Parent folders are created. The finished file gets the usual permissions
    (``0o666`` less the umask) rather than the private ones of a temporary file.

    Args:
        path: str or path-like. The file to create or replace.

    Yields:
        Path: the temporary file (already created, empty) to write.

    Raises:
        Exception: whatever the block raises, after removing the temporary file; ``path`` is untouched, so a
            file that existed keeps its old content.

    Example:
        >>> with atomic_write("run/metrics.csv") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("step,loss\\n")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _flush_to_disk(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_tiff(path: str | os.PathLike, array: np.ndarray, pixel_size_um: float | None = None,
               channels: list[str] | None = None, description: str = "") -> Path:
    """Write an image as a ``float32`` OME-TIFF, atomically, with its physical pixel size when known.

    The OME-XML (tifffile's writer) states ``PhysicalSizeX`` / ``PhysicalSizeY`` in micrometres, the channel
    names and ``description`` (e.g. the model and command that made the image): Fiji (Bio-Formats), napari and
    bioio read the scale from it. The same pixel size goes into the standard TIFF resolution tags (pixels per
    centimetre) for readers that ignore OME. ``[H, W]`` and ``[H, W, 1]`` are one grey plane (axes YX);
    ``[H, W, C]`` one page with ``C`` interleaved samples (axes YXS, read back as ``H x W x C`` by tifffile and
    by :func:`cvdm_tf.data.sources.read_image`).

    Args:
        path: str or path-like. Target file; parent folders are created.
        array: array-like. ``[H, W]`` or ``[H, W, C]``, converted to ``float32``.
        pixel_size_um: float or None. The pixel size in micrometres, written as metadata.
        channels: list of str or None. A name per channel (e.g. ``["phase (rad)"]``; the samples of ``[H, W, C]``
            share one OME channel, named ``"name 1 / name 2 / ..."``).
        description: str. The OME image description.

    Returns:
        Path: ``path``.

    Raises:
        ValueError: ``array`` is not 2-D or 3-D, or ``channels`` does not name every channel.
    """
    import tifffile

    data = np.asarray(array, dtype=np.float32)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise ValueError(f"write_tiff expects [H, W] or [H, W, C], got shape {data.shape}")
    count = data.shape[-1] if data.ndim == 3 else 1
    if channels is not None and len(channels) != count:
        raise ValueError(f"write_tiff: {len(channels)} channel name(s) for {count} channel(s)")
    metadata = {"axes": "YXS" if data.ndim == 3 else "YX"}
    options = {"photometric": "minisblack", "ome": True, "metadata": metadata}
    if data.ndim == 3:
        options["planarconfig"] = "contig"
    if pixel_size_um:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeXUnit="\u00b5m", PhysicalSizeY=pixel_size_um,
                        PhysicalSizeYUnit="\u00b5m")
        options.update(resolution=(1e4 / pixel_size_um,) * 2, resolutionunit="CENTIMETER")
    if channels:
        # Interleaved samples are one OME channel (SamplesPerPixel = C): it carries their names joined.
        metadata["Channel"] = {"Name": [" / ".join(channels)]}
    if description:
        metadata["Description"] = description
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, data, **options)
    return Path(path)


def tiff_pixel_size_um(path: str | os.PathLike, inch: bool = True) -> float | None:
    """The pixel size in micrometres that :func:`write_tiff` (or ImageJ) stored in a TIFF, or None.

    `inch=False` ignores a resolution in dots per inch: cameras and editors write 72 or 300 dpi as a printing
    hint, which is no pixel size at the sample."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        if "XResolution" not in tags:
            return None
        numerator, denominator = tags["XResolution"].value
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 1
        per_unit = numerator / denominator
        if not per_unit:
            return None
        if int(unit) == 3:  # centimetre
            return 1e4 / per_unit
        if int(unit) == 2:  # inch
            return 25400.0 / per_unit if inch else None
        metadata = tif.imagej_metadata or {}
        return 1.0 / per_unit if metadata.get("unit") in ("um", "micron", "\u00b5m") else None


def write_png(path: str | os.PathLike, array_uint8: np.ndarray) -> Path:
    """Write an 8-bit image as PNG, atomically (via imageio's Pillow plugin, as scikit-image does).

    Args:
        path: str or path-like. Target file; parent folders are created. Written as PNG whatever the suffix.
        array_uint8: np.ndarray. ``uint8`` ``[H, W]`` or ``[H, W, C]`` with ``C`` in 1, 3, 4.

    Returns:
        Path: ``path``.

    Raises:
        ValueError: the dtype is not ``uint8`` (scale and convert first, e.g. with
            ``skimage.util.img_as_ubyte``) or the shape is not an image.
    """
    import imageio.v3 as iio

    data = np.asarray(array_uint8)
    if data.dtype != np.uint8:
        raise ValueError(f"write_png expects uint8 pixels, got {data.dtype}")
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[-1] not in (3, 4)) or data.size == 0:
        raise ValueError(f"write_png expects [H, W] or [H, W, 1|3|4], got shape {data.shape}")
    with atomic_write(path) as tmp:
        iio.imwrite(tmp, np.ascontiguousarray(data), plugin="pillow", extension=".png")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON, atomically.

    NumPy scalars and arrays and paths are converted (``item()``, ``tolist()``, ``str``). The object is
    encoded before anything is written, so an unserialisable object leaves no file behind.

    Args:
        path: str or path-like. Target file; parent folders are created.
        obj: any JSON-serialisable object.

    Returns:
        Path: ``path``.

    Raises:
        TypeError: ``obj`` holds something JSON cannot encode.
    """
    text = json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False) + "\n"
    return write_text(path, text)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8, atomically (line endings as given).

    Args:
        path: str or path-like. Target file; parent folders are created.
        text: str. The content.

    Returns:
        Path: ``path``.
    """
    if not isinstance(text, str):
        raise TypeError(f"write_text expects str, got {type(text).__name__}")
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    return Path(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _flush_to_disk(path: Path) -> None:
    """fsync the finished temporary file so the rename cannot expose an empty file after a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else by set-and-restore."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
