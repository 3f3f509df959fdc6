"""Cell-like phase phantoms: held-out test objects that share nothing with the training images.

Each phantom is a few cells on a flat background. A cell is an ellipse with a smooth edge (a logistic profile a
few pixels wide) whose thickness rises towards its centre, plus a denser nucleus, plus faint smooth texture:
the kind of object a phase microscope sees. Phases are scaled so the thickest point is `peak` radians.
"""

from __future__ import annotations

import numpy as np
from skimage.filters import gaussian

#: The pixel size (um) phantoms are drawn at unless told otherwise: the paper's 0.21 um.
REFERENCE_PIXEL_UM = 0.21


def cell_phantom(size: int, rng: np.random.Generator, peak: float = 3.0,
                 pixel_size_um: float = REFERENCE_PIXEL_UM) -> np.ndarray:
    """One [size, size] float32 phase image in radians, minimum 0, maximum `peak`.

    Cells have semi-axes of 2.1-5.5 um (10-26 px at the default 0.21 um pixels) whatever the image size; their
    number grows with the area (2-5 per 27 x 27 um, 128 x 128 px at 0.21 um).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = np.zeros((size, size))
    zoom = REFERENCE_PIXEL_UM / pixel_size_um  # px per reference px
    area = (size / (128.0 * zoom)) ** 2
    for _ in range(max(1, int(round(rng.integers(2, 6) * area)))):
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        a, b = rng.uniform(10, 26, 2) * zoom
        angle = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / a
        v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / b
        r = np.sqrt(u**2 + v**2)
        edge = 1.0 / (1.0 + np.exp((r - 1.0) * rng.uniform(6, 14)))
        body = edge * (1.2 - 0.5 * r**2).clip(0.2)
        nucleus = 0.8 / (1.0 + np.exp((r - rng.uniform(0.3, 0.5)) * 12))
        phase = np.maximum(phase, body + nucleus)
    texture = gaussian(rng.normal(size=(size, size)), sigma=rng.uniform(1.5, 3.0) * zoom, preserve_range=True)
    phase = phase * (1.0 + 0.3 * texture / (np.abs(texture).max() + 1e-9))
    phase -= phase.min()
    return (phase / max(phase.max(), 1e-9) * peak).astype(np.float32)


def cell_phantoms(count: int, size: int, seed: int = 0, peak: float = 3.0,
                  pixel_size_um: float = REFERENCE_PIXEL_UM) -> list[np.ndarray]:
    """`count` phantoms, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    return [cell_phantom(size, rng, peak, pixel_size_um) for _ in range(count)]
