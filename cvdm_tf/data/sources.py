"""Where images come from: folders, sources of training images and the images that ship inside scikit-image.

Reading one file is `readers.py` (every reader returns float32 [H, W, C] with the file's pixel values, and turns
any failure into one `InputError` naming the file); this module lists folders, names what it reads, holds out
whole images and finds the embedded images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np

from cvdm_tf.data.readers import (IMAGE_SUFFIXES, read_image, read_image_with_dtype, read_stack,  # noqa: F401
                                  read_stack_with_dtype, to_grayscale, to_unit_range)
from cvdm_tf.errors import InputError

__all__ = [
    "list_images",
    "iter_source_images",
    "embedded_images",
    "split_by_image",
    "large_enough",
    "unique_name",
    "image_name",
    "EMBEDDED_IMAGE_FILES",
]

#: Grey or colour photographs and micrographs stored inside scikit-image's wheel (``skimage/data``), read from
#: disk without pooch or any network access, all at least 256 px on the short side. Name -> file name.
#: Left out on purpose: ``page`` (191 px), ``text`` (172 px) and ``microaneurysms`` (102 px) are too small;
#: ``horse`` (binary silhouette), ``shepp_logan_phantom``, ``logo``, ``colorwheel``, the chessboards and
#: ``binary_blobs`` are synthetic; ``cat`` is ``chelsea``; ``motorcycle_right`` repeats ``motorcycle_left``;
#: ``brain``, ``cells3d``, ``kidney``, ``skin``, ``lily``, ... need a download.
EMBEDDED_IMAGE_FILES = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}

_MIN_EMBEDDED_SIDE = 256

# === Folders and sources ===


def list_images(folder: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """List the image files under a folder, recursively.

    Hidden files and folders (name starting with ``.``) are skipped, symbolic links to folders are not
    followed, and only ``suffixes`` (default :data:`IMAGE_SUFFIXES`) count (any letter case).

    Args:
        folder: str or path-like. The folder to search.
        suffixes: sequence of str. File suffixes with their dot.

    Returns:
        list of Path: ``folder / relative path`` for each image, sorted by relative path.

    Raises:
        InputError: ``folder`` does not exist, is not a folder, or holds no images.
    """
    name = os.fspath(folder)
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{name}: no such folder")
    if not root.is_dir():
        raise InputError(f"{name}: not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if not filename.startswith(".") and Path(filename).suffix.lower() in suffixes:
                found.append(Path(dirpath, filename))
    if not found:
        raise InputError(f"{name}: no images found (looked for {' '.join(suffixes)})")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def iter_source_images(source: str | os.PathLike, *, with_dtype: bool = False) -> list[tuple]:
    """Read every image of a source: one file (image or stack) or a folder of them.

    Names come from the path relative to the folder without its suffix, folders joined by ``_``
    (``sub/cell1.tif`` -> ``sub_cell1``; a single file gives its stem). A file holding several images (a
    stack, an ``.npz``) gives ``stem_000``, ``stem_001``, ... Names are unique ignoring letter case (a
    clash gets ``-2``, ``-3``, ...), so they can name output files; the order is the sorted file order.

    Args:
        source: str or path-like. An image/stack file or a folder.
        with_dtype: bool. Also return each image's source dtype (for :func:`to_unit_range`).

    Returns:
        list of tuple: ``(name, image float32 [H, W, C])``, or ``(name, image, source_dtype)`` with
        ``with_dtype=True``.

    Raises:
        InputError: the source does not exist, a folder holds no images, or any file is unreadable.
    """
    root = Path(source)
    if not root.exists():
        raise InputError(f"{os.fspath(source)}: no such file or folder")
    if root.is_dir():
        files = [(p, image_name(p, root)) for p in list_images(root)]
    else:
        files = [(root, image_name(root))]
    used: set[str] = set()
    out = []
    for path, base in files:
        images = read_stack_with_dtype(path)
        for index, (image, dtype) in enumerate(images):
            name = unique_name(f"{base}_{index:03d}" if len(images) > 1 else base, used)
            out.append((name, image, dtype) if with_dtype else (name, image))
    return out


def image_name(path: Path, root: Path | None = None) -> str:
    """The name outputs of an image file take: its path relative to `root` without the suffix, folders joined by
    ``_`` (``sub/cell1.tif`` -> ``sub_cell1``); an OME-TIFF's ``.ome`` goes with the suffix (``a.ome.tif`` -> ``a``)."""
    parts = list((path.relative_to(root) if root is not None else Path(path.name)).with_suffix("").parts)
    if parts[-1].lower().endswith(".ome"):
        parts[-1] = parts[-1][: -len(".ome")]
    return "_".join(parts)


def embedded_images(grayscale: bool = True) -> list[tuple[str, np.ndarray]]:
    """The default training set: the photographs and micrographs that ship inside scikit-image, in grey.

    The files of :data:`EMBEDDED_IMAGE_FILES` are read straight from the installed ``skimage/data`` folder
    (no pooch, no network); colour ones become luminance (:func:`to_grayscale`) and all are scaled to
    ``[0, 1]`` by their bit depth (:func:`to_unit_range`). Files missing from this scikit-image version and
    images under 256 px on the short side are skipped.

    Args:
        grayscale: bool. False keeps each image's own channels (RGB or grey; an alpha channel is dropped).

    Returns:
        list of tuple: ``(name, image float32 [H, W, 1] in [0, 1])`` (``[H, W, 1 or 3]`` without ``grayscale``)
        in the fixed order of :data:`EMBEDDED_IMAGE_FILES`.

    Raises:
        InputError: none of the files is in the installed scikit-image.
    """
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    out = []
    for name, filename in EMBEDDED_IMAGE_FILES.items():
        path = folder / filename
        if not path.is_file():
            continue
        image, dtype = read_image_with_dtype(path)
        if min(image.shape[:2]) < _MIN_EMBEDDED_SIDE:
            continue
        if grayscale:
            image = to_grayscale(image)
        elif image.shape[-1] in (2, 4):
            image = image[..., :-1]
        out.append((name, to_unit_range(image, dtype)))
    if not out:
        raise InputError(f"{folder}: none of scikit-image's embedded images found (reinstall scikit-image)")
    return out


def large_enough(items: list[tuple[str, np.ndarray]], min_size: int, where: str, warn=None) -> list:
    """The ``(name, image)`` items at least ``min_size`` px on both sides (the training crop), each skipped one
    named in one line through ``warn(message)``; an InputError naming ``where`` if none is left."""
    usable = [(name, image) for name, image in items if min(image.shape[:2]) >= min_size]
    if not usable:
        sizes = ", ".join(f"{name} {image.shape[0]} x {image.shape[1]}" for name, image in items[:5])
        raise InputError(f"{where}: no image is at least {min_size} x {min_size} pixels, the training crop size "
                         f"(data.image_size / --image-size); found {sizes}{' ...' if len(items) > 5 else ''}")
    if warn is not None:
        for name, image in items:
            if min(image.shape[:2]) < min_size:
                warn(f"skipping {name} ({image.shape[0]} x {image.shape[1]}): smaller than the "
                     f"{min_size} x {min_size} training crop")
    return usable


_Item = TypeVar("_Item")


def split_by_image(
    items: Sequence[_Item], validation_fraction: float, seed: int
) -> tuple[list[_Item], list[_Item]]:
    """Hold out whole images for validation (never crops of a training image).

    ``round(n * validation_fraction)`` items, at least 1 and at most ``n - 1`` when ``n >= 2`` and the
    fraction is above 0, are drawn with ``numpy.random.default_rng(seed)``; both lists keep the input order.
    The same items, fraction and seed always give the same split. A fraction of 0, or fewer than 2 items,
    gives an empty validation set.

    Args:
        items: sequence. Whole images, e.g. the ``(name, image)`` pairs of :func:`iter_source_images`.
        validation_fraction: float. Share of images held out, in ``[0, 1)``.
        seed: int. Seed of the draw.

    Returns:
        tuple: ``(train, validation)`` lists.

    Raises:
        InputError: ``validation_fraction`` is outside ``[0, 1)``.
    """
    fraction = float(validation_fraction)
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"validation_fraction: must be in [0, 1), got {validation_fraction!r}")
    items = list(items)
    n = len(items)
    n_val = 0
    if n >= 2 and fraction > 0.0:
        n_val = min(max(int(round(n * fraction)), 1), n - 1)
    held = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [item for i, item in enumerate(items) if i not in held]
    val = [item for i, item in enumerate(items) if i in held]
    return train, val


def unique_name(name: str, used: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``, ... if it (ignoring case) is taken; records the result."""
    candidate, n = name, 1
    while candidate.lower() in used:
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate.lower())
    return candidate
