"""Through-focus z-stacks from TIFF / OME-TIFF files, with their z spacing when the file records it.

A brightfield through-focus stack is Z planes of one field of view, I(z) for the reference phase of
`cvdm_tf.physics.through_focus`. The reader keeps the pixel values as stored (float32) and looks for the z step
in the metadata, in this order:

1. OME-XML (OME-TIFF): ``Pixels/@PhysicalSizeZ`` with ``PhysicalSizeZUnit`` (default micrometre, per the OME
   schema);
2. ImageJ hyperstack metadata: the ``spacing`` key, in the ImageJ ``unit`` (micron, um, nm, mm...; a stack with
   a spacing but no unit is taken to be in micrometres, ImageJ's usual choice for microscopy).

If neither is there (a plain multi-page TIFF), the step is ``None`` and the caller must supply it: the
reference phase scales with 1 / step, so a guessed step is a wrong phase (see `through_focus.fit_derivative`).
Axes of length 1 (a single channel or time point) are dropped; what is left must be Z x H x W.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from cvdm_tf.data.readers import check_tiff_directories
from cvdm_tf.errors import InputError

__all__ = ["read_stack", "z_step", "pixel_size_um"]

# Length units as OME and ImageJ write them, in micrometres.
_MICROMETRES_PER_UNIT = {
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,  # Greek mu, which some writers use instead of the micro sign
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "\\u00b5m": 1.0,  # ImageJ's escaped micro sign
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
}


def read_stack(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """Read a TIFF or OME-TIFF z-stack as ``float32 [Z, H, W]`` and its z step in micrometres.

    Args:
        path: str or path-like. A ``.tif`` / ``.tiff`` (``.ome.tif``) whose first series is a z-stack.

    Returns:
        tuple: ``(stack, z_step_um)``: ``stack`` is ``float32 [Z, H, W]`` with the stored values, Z >= 2;
        ``z_step_um`` is a positive float from the OME or ImageJ metadata, or ``None`` when the file has none.

    Raises:
        InputError: the file is missing, not a TIFF, unreadable or truncated, a single 2-D image or otherwise
            not Z x H x W, colour or multi-channel, complex, or has NaN / infinite pixels. One line, starting
            with ``path``.

    Example:
        >>> stack, z_step_um = read_stack("cells_through_focus.ome.tif")  # doctest: +SKIP
        >>> stack.shape, z_step_um  # doctest: +SKIP
        ((41, 512, 512), 0.5)
    """
    import tifffile

    name = os.fspath(path)
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{name}: no such file" if not file.exists() else f"{name}: not a file")
    try:
        with tifffile.TiffFile(file) as tif:
            check_tiff_directories(tif, name)
            if not tif.series:
                raise InputError(f"{name}: the TIFF holds no image data")
            series = tif.series[0]
            axes, array = series.axes, series.asarray()
            z_step_um = _z_step(tif, name)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the decoder means the file is not a readable TIFF
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{name}: not a readable TIFF stack ({reason})") from exc
    return _as_stack(array, axes, name), z_step_um


def z_step(path: str | os.PathLike) -> float | None:
    """The z step (um) a TIFF's OME or ImageJ metadata states, or None (also for a file that is not a TIFF);
    from the header alone, no pixel is read."""
    import tifffile

    name = os.fspath(path)
    try:
        with tifffile.TiffFile(path) as tif:
            return _z_step(tif, name)
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - not a TIFF: no z metadata; the image readers report what is wrong
        return None


def pixel_size_um(path: str | os.PathLike) -> float | None:
    """The pixel size (um) a TIFF's metadata states, or None (also for a file that is not a TIFF); from the
    header alone. In order: OME ``Pixels/@PhysicalSizeX`` (with its unit); ImageJ's resolution in its unit; the
    TIFF resolution tags in centimetres (what `io.write_tiff` writes). A resolution in dots per inch is a
    printing hint, not a pixel size, and is ignored."""
    import tifffile

    from cvdm_tf import io

    name = os.fspath(path)
    try:
        with tifffile.TiffFile(path) as tif:
            size = _ome_pixel_size(tif.ome_metadata, name) if tif.is_ome else None
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - not a TIFF: no metadata
        return None
    return size if size is not None else io.tiff_pixel_size_um(path, inch=False)


def _ome_pixel_size(ome_xml: str | None, name: str) -> float | None:
    """Pixels/@PhysicalSizeX of the first image, in um."""
    pixels = _ome_pixels(ome_xml, name)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    return _in_micrometres(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit"), name, "OME PhysicalSizeX",
                           what="pixel size")


def _z_step(tif, name: str) -> float | None:
    step = _ome_z_step(tif.ome_metadata, name) if tif.is_ome else None
    if step is None and tif.is_imagej:
        step = _imagej_z_step(tif.imagej_metadata or {}, name)
    return step


def _as_stack(array: np.ndarray, axes: str, name: str) -> np.ndarray:
    """Drop axes of length 1, then insist on Z x H x W of finite real numbers."""
    keep = [i for i, n in enumerate(array.shape) if n > 1]
    axes = "".join(axes[i] for i in keep) if len(axes) == array.ndim else axes
    array = array.reshape([array.shape[i] for i in keep])
    if array.ndim == 2:
        raise InputError(f"{name}: a single {array.shape[0]} x {array.shape[1]} image, not a z-stack")
    if array.ndim != 3:
        raise InputError(f"{name}: expected a Z x H x W stack, got shape {array.shape} (axes {axes})")
    if "S" in axes or "C" in axes:
        raise InputError(f"{name}: a colour or multi-channel image (axes {axes}), not one z-stack")
    if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"{name}: pixels of type {array.dtype}; expected real numbers")
    stack = array.astype(np.float32)
    bad = int(np.size(stack) - np.count_nonzero(np.isfinite(stack)))
    if bad:
        raise InputError(f"{name}: {bad} pixels are NaN or infinite")
    return stack


def _in_micrometres(value, unit: str | None, name: str, source: str, what: str = "z spacing") -> float | None:
    """A positive finite length converted to um; None for a unit that is not a length (e.g. 'pixel')."""
    try:
        step = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: {source} {what} {value!r} is not a number") from None
    if not math.isfinite(step) or step <= 0:
        raise InputError(f"{name}: {source} {what} {value!r} must be a positive number")
    scale = _MICROMETRES_PER_UNIT.get((unit or "um").strip().lower())
    return None if scale is None else step * scale


def _ome_pixels(ome_xml: str | None, name: str) -> dict | None:
    """The attributes of the first image's Pixels element of OME-XML (tifffile's OME parser), or None."""
    import tifffile

    if not ome_xml:
        return None
    try:
        images = tifffile.xml2dict(ome_xml).get("OME", {}).get("Image")
    except ElementTree.ParseError as exc:
        raise InputError(f"{name}: unreadable OME-XML metadata ({exc})") from exc
    image = images[0] if isinstance(images, list) else images
    pixels = image.get("Pixels") if isinstance(image, dict) else None
    return pixels if isinstance(pixels, dict) else None


def _ome_z_step(ome_xml: str | None, name: str) -> float | None:
    """Pixels/@PhysicalSizeZ of the first image, in um (OME's default unit is the micrometre)."""
    pixels = _ome_pixels(ome_xml, name)
    if pixels is None or pixels.get("PhysicalSizeZ") is None:
        return None
    return _in_micrometres(pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeZUnit"), name, "OME PhysicalSizeZ")


def _imagej_z_step(metadata: dict, name: str) -> float | None:
    """ImageJ's 'spacing' (the voxel depth) in its 'unit', in um."""
    if "spacing" not in metadata:
        return None
    return _in_micrometres(metadata["spacing"], metadata.get("unit"), name, "ImageJ spacing")
