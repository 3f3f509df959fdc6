"""Super-resolution pairs from files: the BioSR data set as published, paired-image folders, the CVDM ``.npz``.

A pair is a widefield image on a coarse grid and a SIM target on a grid ``scale`` (2) times finer. The
widefield image of a raw SIM stack is the *sum* of its frames, as DL-SR builds it (its
``DataAugumentation_ForTrain.m``). Layouts :func:`find_pairs` recognises under its root (the root may also be
one structure folder itself)::

    root/
      Microtubules/                     a) BioSR: one target per cell
        Cell_001/
          RawSIMData_level_01.mrc       raw SIM, 9 frames of h x w (level = SNR level, 1 = noisiest)
          RawSIMData_level_02.mrc
          RawSIMData_gt.mrc             high-SNR raw stack (not used)
          SIM_gt.mrc                    the target, 2h x 2w
      ER/                               b) BioSR's ER set: one target per level
        Cell_001/
          RawSIMData/RawSIMData_level_01.mrc
          GTSIM/GTSIM_level_01.mrc
      Mine/                             c) paired images (TIFF, PNG or .npy, see sources.IMAGE_SUFFIXES)
        wf/NAME.tif                     widefield image, or a stack of raw frames to sum
        gt/NAME.tif                     target

``F-actin_Nonlinear`` (25-frame nonlinear SIM, two targets ``SIM_gt_a.mrc`` / ``SIM_gt_b.mrc`` per cell) is
*not* supported: its cells are skipped with a warning, since which target to pair, and on which grid, is not
documented.

Every reader turns bad input (truncated or foreign files, complex MRC modes, NaN pixels, wrong frame counts,
targets off the 2x grid) into one :class:`~cvdm_tf.errors.InputError` whose message starts with the path, as
:mod:`cvdm_tf.data.sources` does; TIFF/PNG/npy decoding is that module's.

Normalisation: :func:`percentile_normalize` (NumPy) and :func:`percentile_normalize_tf` (TensorFlow) map the
``low`` / ``high`` percentiles of each image to 0 / 1 (DFCAN's ``prctile_norm`` is 0-100 with clipping,
CSBDeep's ``normalize`` 1-99.8 without) and return the offset and scale that undo it.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from cvdm_tf.data.readers import check_tiff_directories
from cvdm_tf.data.sources import list_images, read_stack_with_dtype, split_by_image, unique_name
from cvdm_tf.errors import InputError

__all__ = [
    "PairFiles",
    "read_mrc",
    "read_widefield",
    "find_pairs",
    "load_pair",
    "read_npz_pairs",
    "split_by_cell",
    "percentile_normalize",
    "percentile_normalize_tf",
]

#: Raw SIM frames per stack in BioSR's linear SIM sets (3 angles x 3 phases).
SIM_FRAMES = 9

#: MRC modes read as images, and their pixel types.
MRC_IMAGE_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16"}
# Other modes of the MRC / Priism formats: recognised (so the file is MRC) but not images we can use.
_MRC_OTHER_MODES = {3: "complex int16", 4: "complex float32", 12: "float16", 16: "RGB uint8", 101: "4-bit"}
_MRC_HEADER_BYTES = 1024
_PRIISM_ID = -16224  # Priism headers carry this int16 at byte 96 instead of MRC2014's "MAP " at byte 208

_RAW_FILE = re.compile(r"^RawSIMData_level_(\d+)\.mrc$", re.IGNORECASE)
_CELL_FOLDER = re.compile(r"^cell_?\d+$", re.IGNORECASE)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_LAYOUTS = (
    "STRUCT/Cell_NNN/RawSIMData_level_LL.mrc + SIM_gt.mrc, "
    "STRUCT/Cell_NNN/RawSIMData/RawSIMData_level_LL.mrc + GTSIM/GTSIM_level_LL.mrc, "
    "wf/NAME + gt/NAME images"
)


@dataclass(frozen=True)
class PairFiles:
    """The files of one widefield / target pair, found by :func:`find_pairs` and read by :func:`load_pair`.

    Attributes:
        name: str. Unique, filesystem-safe, e.g. ``"Microtubules_Cell_003_level_02"``.
        structure: str. The structure folder's name as on disk, e.g. ``"Microtubules"``.
        cell: str. The grouping key for splits: ``"Microtubules/Cell_003"``; for paired images the image
            name (``"STRUCT/NAME"`` when the ``wf``/``gt`` folders sit in a structure folder below the root).
        level: int or None. BioSR's SNR level; None for paired images.
        widefield: Path. Raw SIM stack or widefield image.
        target: Path. The SIM target.
        frames: int. Frames the widefield file holds: 9 for raw SIM stacks (summed), 1 for a widefield image.
    """

    name: str
    structure: str
    cell: str
    level: int | None
    widefield: Path
    target: Path
    frames: int


# === Reading files ===


def read_mrc(path: str | os.PathLike) -> np.ndarray:
    """Read an MRC (or Priism) file as ``float32 [frames, H, W]``, values unchanged.

    The header is checked before any pixel is read (so a foreign or forged header allocates nothing), then
    the ``mrcfile`` package reads the data in permissive mode, which BioSR's Priism-style headers (no
    ``"MAP "`` identifier, no machine stamp) need. Without a valid machine stamp the byte order is the one
    under which the header's mode is a valid MRC mode, little-endian first (as ``mrcfile`` does).

    Rows are ``y`` and columns ``x`` (``mrcfile``'s ``[z, y, x]``); DL-SR's ``read_mrc.py`` returns the
    transpose ``[x, y, z]``, which matters only when comparing with arrays it wrote.

    Args:
        path: str or path-like. An MRC file of mode 0 (int8), 1 (int16), 2 (float32) or 6 (uint16).

    Returns:
        np.ndarray: ``float32 [frames, H, W]``; a 2-D file gives ``[1, H, W]``.

    Raises:
        InputError: missing file, not MRC, unsupported mode (complex, float16, RGB, 4-bit), data shorter than
            the header says, or NaN/Inf pixels. The message starts with ``path``.
    """
    import mrcfile

    name, path = _checked_path(path)
    header = _mrc_header(path, name)
    nx, ny = int(header["nx"]), int(header["ny"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # permissive mode reports problems as warnings: keep them for messages
        try:
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                data = None if mrc.data is None else np.array(mrc.data)
        except Exception as exc:  # noqa: BLE001 - any failure of the decoder is bad input
            raise InputError(f"{name}: not a readable MRC file ({_reason(exc)})") from exc
    if data is None or data.size % (nx * ny) or data.shape[-2:] != (ny, nx):
        detail = "; ".join(" ".join(str(w.message).split()) for w in caught) or "no data block"
        raise InputError(f"{name}: not a readable MRC file ({detail[:200]})")
    frames = data.reshape(-1, ny, nx)
    if frames.dtype.kind == "f" and not np.isfinite(frames).all():
        nan, inf = int(np.isnan(frames).sum()), int(np.isinf(frames).sum())
        raise InputError(f"{name}: contains NaN or Inf pixels ({nan} NaN, {inf} Inf of {frames.size})")
    return frames.astype(np.float32)


def read_widefield(path: str | os.PathLike, frames: int = SIM_FRAMES) -> np.ndarray:
    """Read a widefield image for inference or evaluation: one grey image, or raw SIM frames summed.

    Args:
        path: str or path-like. A 2-D image (TIFF, PNG, ``.npy`` or a one-frame MRC), taken as it is; or a
            stack (TIFF, ``.npy`` or MRC) of exactly ``frames`` raw SIM frames, summed over the frames.
        frames: int. Raw frames per stack (9 for BioSR's linear SIM).

    Returns:
        np.ndarray: ``float32 [H, W]``.

    Raises:
        InputError: unreadable file, a colour image, or a stack of another frame count.
    """
    stack = _read_frames(path)
    if stack.shape[0] == 1:
        return stack[0]
    return _sum_frames(stack, os.fspath(path), frames, single_ok=True)


def load_pair(pair: PairFiles, scale: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair: the widefield image (raw frames summed) and its target on the ``scale`` x finer grid.

    Args:
        pair: PairFiles. From :func:`find_pairs`; the widefield file must hold exactly ``pair.frames`` frames.
        scale: int. Target pixels per widefield pixel along each axis.

    Returns:
        tuple: ``(widefield float32 [h, w], target float32 [scale*h, scale*w])``.

    Raises:
        InputError: unreadable files, a frame count other than ``pair.frames``, a target that is not one
            image, or a target grid that is not ``scale`` x the widefield grid.
    """
    widefield = _sum_frames(_read_frames(pair.widefield), os.fspath(pair.widefield), pair.frames)
    target_stack = _read_frames(pair.target)
    if target_stack.shape[0] != 1:
        raise InputError(
            f"{os.fspath(pair.target)}: holds {target_stack.shape[0]} frames; expected one target image"
        )
    target = target_stack[0]
    _check_grid(target.shape, widefield.shape, scale, os.fspath(pair.target), os.fspath(pair.widefield))
    return widefield, target


def read_npz_pairs(path: str | os.PathLike, scale: int = 2) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Read the CVDM reference code's BioSR ``.npz``: arrays ``x`` (widefield) and ``y`` (target).

    The reference trains on ``y - x``, so its ``x`` is already upsampled to the target grid. When ``x`` has
    the shape of ``y`` it is brought back to the widefield grid by ``scale x scale`` mean binning: exact for
    nearest-neighbour upsampling, an approximation (a slightly blurred widefield image) for bilinear or
    bicubic. The npz's intensity scaling is unknown; normalise afterwards (:func:`percentile_normalize`).

    Args:
        path: str or path-like. The ``.npz``; ``x`` and ``y`` shaped ``(N, h, w)`` or ``(N, h, w, 1)``.
        scale: int. Target pixels per widefield pixel along each axis.

    Returns:
        list of tuple: ``(name, widefield float32 [h, w], target float32 [scale*h, scale*w])``, names
        ``STEM_000``, ``STEM_001``, ... in array order.

    Raises:
        InputError: unreadable archive, missing ``x`` or ``y``, shapes that disagree, NaN/Inf values.
    """
    name, path = _checked_path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(f"{name}: not an .npz archive (a single array)")
        with archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise InputError(f"{name}: no array {' or '.join(missing)} (holds {', '.join(archive.files)})")
            x, y = archive["x"], archive["y"]
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of np.load is bad input
        raise InputError(f"{name}: not a readable .npz archive ({_reason(exc)})") from exc
    x, y = _npz_stack(x, name, "x"), _npz_stack(y, name, "y")
    if len(x) != len(y):
        raise InputError(f"{name}: x holds {len(x)} images but y holds {len(y)}")
    if x.shape[1:] == y.shape[1:] and scale > 1:
        x = _bin_mean(x, scale, name)
    _check_grid(y.shape[1:], x.shape[1:], scale, f"{name} [y]", f"{name} [x]")
    width = max(3, len(str(len(x) - 1)))
    return [(f"{path.stem}_{i:0{width}d}", x[i], y[i]) for i in range(len(x))]


# === Finding pairs ===


def find_pairs(
    root: str | os.PathLike,
    structures: Iterable[str] | str | None = None,
    levels: Iterable[int] | None = None,
) -> list[PairFiles]:
    """Find the widefield / target pairs under ``root`` (layouts in the module docstring), without reading pixels.

    ``root`` is a structure folder (holding ``Cell_NNN`` folders or ``wf``/``gt`` folders) or a folder of
    structure folders.

    Args:
        root: str or path-like. The data folder.
        structures: str, iterable of str or None. Keep only these structure folders, compared ignoring case
            (``("microtubules", "ccps")`` matches ``Microtubules`` and ``CCPs``); None keeps all.
        levels: iterable of int or None. Keep only these SNR levels; paired images have no level and are
            dropped when this is set. None keeps all.

    Returns:
        list of PairFiles: sorted by structure, cell (``Cell_2`` before ``Cell_10``) and level.

    Raises:
        InputError: ``root`` is not a folder; a cell has raw data but no target (the message names the cell
            folder and the missing file); a widefield image has no target of the same name; nothing found.
    """
    name = os.fspath(root)
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{name}: {'not a folder' if root.exists() else 'no such folder'}")
    wanted_structures = _wanted_names(structures)
    wanted_levels = None if levels is None else {int(level) for level in levels}

    pairs: list[PairFiles] = []
    skipped_nonlinear = 0
    for folder in _structure_folders(root):
        if wanted_structures is not None and folder.name.lower() not in wanted_structures:
            continue
        if _is_paired_folder(folder) and wanted_levels is None:
            pairs += _paired_images(folder, "" if folder == root else folder.name + "/")
        for cell in _cell_folders(folder):
            found, nonlinear = _cell_pairs(cell, folder.name, wanted_levels)
            pairs += found
            skipped_nonlinear += nonlinear
    if skipped_nonlinear:
        warnings.warn(
            f"{name}: skipped {skipped_nonlinear} cells with SIM_gt_a/SIM_gt_b targets (F-actin_Nonlinear is "
            "not supported; pass structures= to leave it out)",
            stacklevel=2,
        )
    if not pairs:
        filters = f"; structures={sorted(wanted_structures)}" if wanted_structures is not None else ""
        filters += f"; levels={sorted(wanted_levels)}" if wanted_levels is not None else ""
        raise InputError(f"{name}: no image pairs found (looked for {_LAYOUTS}{filters})")
    pairs.sort(key=lambda p: (_natural(p.structure), _natural(p.cell), -1 if p.level is None else p.level))
    used: set[str] = set()
    # Names are made after sorting so that a clash suffix (-2, -3) does not depend on folder listing order.
    return [_with_name(pair, used) for pair in pairs]


def split_by_cell(
    pairs: Sequence[PairFiles], validation_fraction: float, seed: int
) -> tuple[list[PairFiles], list[PairFiles]]:
    """Hold out whole cells for validation: all SNR levels of a cell land in the same split.

    The cells (sorted, so the input order does not matter) are split by
    :func:`cvdm_tf.data.sources.split_by_image`: ``round(cells * fraction)`` cells, at least one when the
    fraction is above 0, and always at least one cell left for training; a fraction of 0 or a single cell
    gives no validation.

    Args:
        pairs: sequence of PairFiles.
        validation_fraction: float. Share of cells held out, in ``[0, 1)``.
        seed: int. Seed of the draw; the same pairs, fraction and seed give the same split.

    Returns:
        tuple: ``(train, validation)`` lists of pairs, each in the input order.

    Raises:
        InputError: ``validation_fraction`` outside ``[0, 1)``.
    """
    cells = sorted({pair.cell for pair in pairs}, key=_natural)
    _, held = split_by_image(cells, validation_fraction, seed)
    held_cells = set(held)
    train = [pair for pair in pairs if pair.cell not in held_cells]
    validation = [pair for pair in pairs if pair.cell in held_cells]
    return train, validation


# === Percentile normalisation ===


def percentile_normalize(
    image: np.ndarray, low: float = 0.0, high: float = 100.0, clip: bool = True, eps: float = 1e-7
) -> tuple[np.ndarray, tuple[float, float]]:
    """Map the ``low`` and ``high`` percentiles of an image to 0 and 1 (DFCAN's ``prctile_norm``).

    ``normalized = (image - p_low) / (p_high - p_low + eps)``, percentiles over all values of ``image`` with
    NumPy's default linear interpolation. ``eps`` is added (as DFCAN and CSBDeep do) so a constant image
    becomes zeros instead of dividing by zero.

    Args:
        image: np.ndarray. One image, any shape.
        low: float. Lower percentile in ``[0, 100)``; DFCAN uses 0, CSBDeep 1.
        high: float. Upper percentile in ``(low, 100]``; DFCAN uses 100, CSBDeep 99.8.
        clip: bool. Clip the result to ``[0, 1]`` (DFCAN does, CSBDeep does not).
        eps: float. Added to the denominator.

    Returns:
        tuple: ``(normalized float32, (offset, scale))`` with ``image == normalized * scale + offset``
        wherever nothing was clipped; ``offset = p_low``, ``scale = p_high - p_low + eps``.

    Raises:
        InputError: percentiles outside ``0 <= low < high <= 100``.
    """
    _check_percentiles(low, high)
    values = np.asarray(image, dtype=np.float64)
    p_low, p_high = np.percentile(values, [low, high])
    scale = p_high - p_low + eps
    normalized = (values - p_low) / scale
    if clip:
        np.clip(normalized, 0.0, 1.0, out=normalized)
    return normalized.astype(np.float32), (float(p_low), float(scale))


def percentile_normalize_tf(
    image, low: float = 0.0, high: float = 100.0, clip: bool = True, eps: float = 1e-7, channels: bool = False
):
    """:func:`percentile_normalize` in TensorFlow, per image of a batch, usable inside ``tf.function``.

    Percentiles come from ``tfp.stats.percentile`` with linear interpolation, NumPy's default, so both
    versions agree to float32 round-off.

    Args:
        image: tensor-like. ``[..., H, W]`` (``channels=False``) or ``[..., H, W, C]`` (``channels=True``);
            leading axes index images, each normalised on its own over its spatial (and channel) axes.
        low, high, clip, eps: as :func:`percentile_normalize`.
        channels: bool. Whether the last axis is a channel axis belonging to each image.

    Returns:
        tuple: ``(normalized, offset, scale)``; ``offset`` and ``scale`` keep the image axes as length 1
        (``[..., 1, 1]`` or ``[..., 1, 1, 1]``), so ``normalized * scale + offset`` undoes the mapping
        where nothing was clipped. Float32 unless ``image`` is float64.

    Raises:
        InputError: percentiles outside ``0 <= low < high <= 100``.
        ValueError: ``image`` has fewer axes than one image.
    """
    import tensorflow as tf
    import tensorflow_probability as tfp

    _check_percentiles(low, high)
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.float64:
        image = tf.cast(image, tf.float32)
    axes = [-3, -2, -1] if channels else [-2, -1]
    if image.shape.rank is not None and image.shape.rank < len(axes):
        raise ValueError(f"percentile_normalize_tf: expected at least {len(axes)} axes, got shape {image.shape}")
    bounds = tfp.stats.percentile(
        image, tf.constant([low, high], image.dtype), axis=axes, interpolation="linear", keepdims=True
    )
    offset = bounds[0]
    scale = bounds[1] - offset + tf.constant(eps, image.dtype)
    normalized = (image - offset) / scale
    if clip:
        normalized = tf.clip_by_value(normalized, 0.0, 1.0)
    return normalized, offset, scale


# === Internals: MRC header ===


def _mrc_header(path: Path, name: str) -> np.void:
    """The checked header: known image mode, positive sizes, and a file long enough for the data it declares."""
    from mrcfile.dtypes import HEADER_DTYPE
    from mrcfile.utils import byte_order_from_machine_stamp

    size = path.stat().st_size
    if size < _MRC_HEADER_BYTES:
        raise InputError(f"{name}: not an MRC file ({size} bytes, shorter than the {_MRC_HEADER_BYTES}-byte header)")
    with open(path, "rb") as fh:
        raw = fh.read(_MRC_HEADER_BYTES)
    orders = ["<", ">"]
    try:  # a valid machine stamp is tried first; Priism headers have none
        orders.insert(0, byte_order_from_machine_stamp(np.frombuffer(raw, HEADER_DTYPE)[0]["machst"]))
    except ValueError:
        pass
    header = None
    for order in orders:
        candidate = np.frombuffer(raw, HEADER_DTYPE.newbyteorder(order))[0]
        sizes = [int(candidate[key]) for key in ("nx", "ny", "nz", "nsymbt")]
        mode = int(candidate["mode"])
        if (mode in MRC_IMAGE_MODES or mode in _MRC_OTHER_MODES) and min(sizes[:3]) > 0 and sizes[3] >= 0:
            header = candidate
            break
    signed = bytes(np.frombuffer(raw, HEADER_DTYPE)[0]["map"])[:3] == b"MAP"
    if header is None:
        why = "no valid mode and size" if signed else "no 'MAP ' or Priism identifier and no valid mode and size"
        raise InputError(f"{name}: not an MRC file ({why} in the header)")
    signed = signed or int(np.frombuffer(raw, header.dtype["mode"].byteorder + "i2", 1, 96)[0]) == _PRIISM_ID
    nx, ny, nz, mode = (int(header[key]) for key in ("nx", "ny", "nz", "mode"))
    if mode not in MRC_IMAGE_MODES:
        expected = ", ".join(f"{m} ({t})" for m, t in MRC_IMAGE_MODES.items())
        raise InputError(f"{name}: unsupported MRC mode {mode} ({_MRC_OTHER_MODES[mode]}); expected {expected}")
    needed = _MRC_HEADER_BYTES + int(header["nsymbt"]) + nx * ny * nz * np.dtype(MRC_IMAGE_MODES[mode]).itemsize
    if needed > size:
        what = "truncated MRC file" if signed else "truncated MRC file or not an MRC file"
        raise InputError(
            f"{name}: {what}: the header declares {nz} frame(s) of {ny} x {nx} {MRC_IMAGE_MODES[mode]} "
            f"({needed} bytes with the header), the file has {size} bytes"
        )
    return header


def has_pairs(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds one of the pair layouts :func:`find_pairs` reads (checked on folder names only)."""
    root = Path(root)
    return root.is_dir() and bool(_structure_folders(root))


def pair_shape(pair: PairFiles, scale: int = 2) -> tuple[int, int]:
    """(H, W) of a pair's target, from the file headers alone (no pixel is read), after checking that the target
    grid is `scale` x the widefield grid (the check `load_pair` makes, done before training starts)."""
    target = _header_shape(Path(pair.target))[-2:]
    widefield = _header_shape(Path(pair.widefield))[-2:]
    _check_grid(target, widefield, scale, str(pair.target), str(pair.widefield))
    return target


def _header_shape(path: Path) -> tuple:
    """The array shape of an image file from its header, leading axes of length 1 dropped."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".mrc":
            header = _mrc_header(path, str(path))
            shape = (int(header["nz"]), int(header["ny"]), int(header["nx"]))
        elif suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                check_tiff_directories(tif, str(path))
                shape = tuple(tif.series[0].shape)
        elif suffix == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        else:
            shape = _read_frames(path).shape
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here is an unreadable file
        raise InputError(f"{path}: not a readable image ({_reason(exc)})") from exc
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 3 and shape[-1] <= 4:  # H x W x C (sources' axis rule): the grid is the first two axes
        shape = shape[:2]
    return tuple(int(n) for n in shape)


# === Internals: frames and grids ===


def _read_frames(path: str | os.PathLike) -> np.ndarray:
    """Any supported file as ``float32 [frames, H, W]``: MRC here, everything else through sources."""
    if Path(path).suffix.lower() == ".mrc":
        return read_mrc(path)
    images = [image for image, _ in read_stack_with_dtype(path)]
    channels = max(image.shape[-1] for image in images)
    if channels > 1:
        h, w = images[0].shape[:2]
        raise InputError(
            f"{os.fspath(path)}: a {channels}-channel (colour) image of {h} x {w} px; expected a grey image "
            "or a stack of grey frames (a 2-4 frame stack reads as channels)"
        )
    return np.stack([image[..., 0] for image in images])


def _sum_frames(stack: np.ndarray, name: str, frames: int, single_ok: bool = False) -> np.ndarray:
    """The sum over the frames of ``stack`` (DL-SR's widefield), which must hold exactly ``frames``."""
    if stack.shape[0] != frames:
        expected = "one widefield image" if frames == 1 else f"{frames} raw SIM frames"
        expected += " or one widefield image" if single_ok and frames != 1 else ""
        raise InputError(
            f"{name}: holds {stack.shape[0]} frame(s) of {stack.shape[1]} x {stack.shape[2]} px; expected {expected}"
        )
    # float64 so that summing float frames loses nothing (integer frames sum exactly in float32 anyway).
    return stack.sum(axis=0, dtype=np.float64).astype(np.float32)


def _check_grid(target_shape, widefield_shape, scale: int, target: str, widefield: str) -> None:
    (big_h, big_w), (h, w) = target_shape, widefield_shape
    if (big_h, big_w) != (scale * h, scale * w):
        raise InputError(f"{target}: {big_h} x {big_w} is not {scale}x the widefield {h} x {w} of {widefield}")


def _npz_stack(array: np.ndarray, name: str, key: str) -> np.ndarray:
    """``(N, h, w)`` or ``(N, h, w, 1)`` real, finite values -> ``float32 (N, h, w)``."""
    if array.dtype.kind not in "uif":
        raise InputError(f"{name}: array {key} has dtype {array.dtype}; expected real numbers")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or 0 in array.shape:
        raise InputError(f"{name}: array {key} has shape {array.shape}; expected (N, h, w) or (N, h, w, 1)")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{name}: array {key} contains NaN or Inf values")
    return array.astype(np.float32)


def _bin_mean(stack: np.ndarray, scale: int, name: str) -> np.ndarray:
    """Mean over ``scale x scale`` blocks of each image of an ``(N, H, W)`` stack."""
    n, big_h, big_w = stack.shape
    if big_h % scale or big_w % scale:
        raise InputError(f"{name}: x and y are {big_h} x {big_w}, not divisible by the scale {scale}")
    blocks = stack.reshape(n, big_h // scale, scale, big_w // scale, scale)
    return blocks.mean(axis=(2, 4), dtype=np.float64).astype(np.float32)


# === Internals: folders ===


def _structure_folders(root: Path) -> list[Path]:
    """``root`` itself when it is a structure folder, else its sub-folders that are."""
    if _is_paired_folder(root) or _cell_folders(root):
        return [root]
    return [d for d in _subfolders(root) if _is_paired_folder(d) or _cell_folders(d)]


def _subfolders(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=_natural_path)


def _cell_folders(folder: Path) -> list[Path]:
    return [d for d in _subfolders(folder) if _CELL_FOLDER.match(d.name)]


def _is_paired_folder(folder: Path) -> bool:
    return (folder / "wf").is_dir() and (folder / "gt").is_dir()


def _cell_pairs(cell: Path, structure: str, levels: set[int] | None) -> tuple[list[PairFiles], int]:
    """The pairs of one ``Cell_NNN`` folder (layouts a and b), and 1 if it is a skipped nonlinear cell."""
    key = f"{structure}/{cell.name}"
    found = []
    # a) BioSR: raw stacks beside one per-cell target.
    raw = _raw_files(cell, levels)
    if raw:
        target = cell / "SIM_gt.mrc"
        if not target.is_file():
            if (cell / "SIM_gt_a.mrc").is_file():
                return [], 1
            raise InputError(f"{cell}: has {raw[0][1].name} but no SIM_gt.mrc (the cell's target)")
        found += [PairFiles("", structure, key, level, path, target, SIM_FRAMES) for level, path in raw]
    # b) ER: raw stacks in RawSIMData/, one target per level in GTSIM/.
    for level, path in _raw_files(cell / "RawSIMData", levels):
        target = cell / "GTSIM" / path.name.replace("RawSIMData", "GTSIM", 1)
        if not target.is_file():
            raise InputError(f"{cell}: has RawSIMData/{path.name} but no GTSIM/{target.name} (its target)")
        found.append(PairFiles("", structure, key, level, path, target, SIM_FRAMES))
    return found, 0


def _raw_files(folder: Path, levels: set[int] | None) -> list[tuple[int, Path]]:
    """``(level, path)`` of the ``RawSIMData_level_LL.mrc`` files in ``folder`` whose level is wanted."""
    if not folder.is_dir():
        return []
    out = []
    for path in folder.iterdir():
        match = _RAW_FILE.match(path.name)
        if match and path.is_file() and (levels is None or int(match.group(1)) in levels):
            out.append((int(match.group(1)), path))
    return sorted(out)


def _paired_images(folder: Path, cell_prefix: str) -> list[PairFiles]:
    """Layout c: ``wf/NAME.*`` with ``gt/NAME.*``; each image is its own cell."""
    targets = _images_by_name(folder / "gt")
    pairs = []
    for image_name, widefield in _images_by_name(folder / "wf").items():
        if image_name not in targets:
            raise InputError(f"{widefield}: no target gt/{image_name}.* beside it in {folder}")
        cell = cell_prefix + image_name
        pairs.append(PairFiles("", folder.name, cell, None, widefield, targets[image_name], _count_frames(widefield)))
    return pairs


def _images_by_name(folder: Path) -> dict[str, Path]:
    """Images under ``folder`` keyed by relative path without suffix, folders joined by ``_``."""
    out: dict[str, Path] = {}
    for path in list_images(folder):
        key = "_".join(path.relative_to(folder).with_suffix("").parts)
        if key in out:
            raise InputError(f"{path}: two images named {key} in {folder} ({out[key].name}, {path.name})")
        out[key] = path
    return out


def _count_frames(path: Path) -> int:
    """Frames in a widefield file from its header alone (sources' axis rule: a 3-D array is a stack when both
    its first and last axes are longer than 4)."""
    if path.suffix.lower() not in (".tif", ".tiff", ".npy"):
        return 1
    shape = _header_shape(path)
    return shape[0] if len(shape) == 3 and shape[0] > 4 and shape[-1] > 4 else 1


def _with_name(pair: PairFiles, used: set[str]) -> PairFiles:
    base = pair.cell.replace("/", "_") + ("" if pair.level is None else f"_level_{pair.level:02d}")
    name = unique_name(_UNSAFE.sub("_", base).strip("._") or "pair", used)
    return PairFiles(name, pair.structure, pair.cell, pair.level, pair.widefield, pair.target, pair.frames)


# === Internals: small helpers ===


def _checked_path(path: str | os.PathLike) -> tuple[str, Path]:
    try:
        name, p = os.fspath(path), Path(path)
    except TypeError as exc:
        raise InputError(f"{path!r}: not a file path ({exc})") from exc
    if not p.exists():
        raise InputError(f"{name}: no such file")
    if not p.is_file():
        raise InputError(f"{name}: not a regular file")
    return name, p


def _wanted_names(structures: Iterable[str] | str | None) -> set[str] | None:
    if structures is None:
        return None
    if isinstance(structures, str):
        structures = [structures]
    return {str(s).lower() for s in structures}


def _check_percentiles(low: float, high: float) -> None:
    if not 0.0 <= low < high <= 100.0:
        raise InputError(f"percentiles: need 0 <= low < high <= 100, got low={low!r}, high={high!r}")


def _natural(text: str) -> list:
    """Sort key with digit runs as numbers (``Cell_2`` before ``Cell_10``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", text)]


def _natural_path(path: Path) -> list:
    return _natural(path.name)


def _reason(exc: BaseException) -> str:
    """One line describing an exception, for a message."""
    text = " ".join(str(exc).split())
    text = text[:157] + "..." if len(text) > 160 else text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
