"""Tiled application of a function to an image too large to process whole, seam-free.

Overlapping tiles (at least a quarter of a tile), each weighted by a separable raised-cosine window that ramps
over the overlap, summed and divided by the summed weights: the weights are a partition of one, so an identity
function gives the image back and a smooth function stays smooth across tile borders. Outputs known only up to
a per-tile constant (QPI's offset-free phase) are first shifted by the least-squares offsets that make
overlapping tiles agree.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ["tile_starts", "blend_window", "tiled_apply"]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size) with at least `overlap` overlap; the last tile
    ends at `size` exactly (so all tiles have the same length). One tile when `size <= tile`."""
    if size <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def blend_window(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D weights of a tile: 1 in the middle, raised-cosine ramps sin^2(pi (k + 1/2) / (2 overlap)) over the
    first / last `overlap` pixels where the tile meets another tile (not at the image border). Always > 0.
    Two tiles overlapping by exactly `overlap` sum to 1 there (sin^2 + cos^2)."""
    window = np.ones(length, np.float64)
    overlap = min(overlap, length // 2)
    if overlap > 0:
        ramp = np.sin(np.pi * (np.arange(overlap) + 0.5) / (2 * overlap)) ** 2
        if ramp_start:
            window[:overlap] = ramp
        if ramp_end:
            window[length - overlap:] = ramp[::-1]
    return window


def tiled_apply(function: Callable, image: np.ndarray, tile: int, overlap: int | None = None,
                batch_size: int = 1, progress: Callable | None = None, align: tuple = ()) -> dict:
    """Apply `function` to overlapping tiles of `image` and blend the results without seams.

    The image is covered by tiles of min(tile, H) x min(tile, W) pixels (all the same shape, so a compiled
    function is traced once) overlapping by `overlap` (default a quarter of the tile) or more. Each tile's result
    is weighted by the outer product of `blend_window`s (raised-cosine ramps toward neighbouring tiles, flat at the
    image border) and the sum is divided by the summed weights, so the weights are a partition of one everywhere:
    an identity function gives the image back, a function that returns one constant per tile gives a smooth blend
    bounded by those constants. Accumulation is in float64.

    Outputs named in `align` are known only up to an additive constant per tile (QPI's offset-free phase: a tile
    cannot know its mean phase). Their tiles are shifted by per-tile offsets, the least-squares solution that
    makes overlapping tiles agree on average (offsets summing to zero, so the overall level is kept), before
    blending. These tiles are kept until the end (about (1 + overlap / tile)^2 times the output); the others are
    accumulated as they come, so memory is the outputs plus one batch of tiles.

    Args:
        function: callable(batch [B, th, tw, C]) -> dict name -> [B, th, tw, C'] (or one array).
        image: array [H, W, C].
        tile: int. Tile side.
        overlap: int or None. Minimum overlap of neighbouring tiles (default tile // 4).
        batch_size: int. Tiles per call of `function`.
        progress: callable(done, total) or None, called after each batch.
        align: names of outputs whose tile offsets are reconciled (`""` for a single-array function).

    Returns:
        dict name -> float32 [H, W, C'] (or one array, if `function` returns one).
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    tile_h, tile_w = min(tile, height), min(tile, width)
    overlap_h = tile_h // 4 if overlap is None else overlap
    overlap_w = tile_w // 4 if overlap is None else overlap
    rows, cols = tile_starts(height, tile_h, overlap_h), tile_starts(width, tile_w, overlap_w)
    positions = [(r, c) for r in rows for c in cols]
    weights_h = {r: blend_window(tile_h, overlap_h, r > 0, r + tile_h < height) for r in rows}
    weights_w = {c: blend_window(tile_w, overlap_w, c > 0, c + tile_w < width) for c in cols}

    def weight(r, c):
        return np.outer(weights_h[r], weights_w[c])[..., None]

    sums: dict = {}
    kept: dict = {}  # name -> list of tiles, for the outputs to align
    total_weight = np.zeros((height, width, 1), np.float64)
    single = False
    for first in range(0, len(positions), batch_size):
        chunk = positions[first:first + batch_size]
        batch = np.stack([image[r:r + tile_h, c:c + tile_w] for r, c in chunk])
        out = function(batch)
        if not isinstance(out, dict):
            single, out = True, {"": out}
        for i, (r, c) in enumerate(chunk):
            w = weight(r, c)
            for name, values in out.items():
                values = np.asarray(values)
                if name not in sums:
                    sums[name] = np.zeros((height, width, values.shape[-1]), np.float64)
                if name in align:
                    kept.setdefault(name, []).append(np.array(values[i], np.float32))
                else:
                    sums[name][r:r + tile_h, c:c + tile_w] += w * values[i]
            total_weight[r:r + tile_h, c:c + tile_w] += w
        if progress is not None:
            progress(min(first + batch_size, len(positions)), len(positions))
    for name, tiles in kept.items():
        offsets = _tile_offsets(tiles, positions, (tile_h, tile_w))
        for (r, c), values, offset in zip(positions, tiles, offsets):
            sums[name][r:r + tile_h, c:c + tile_w] += weight(r, c) * (values + offset)
    result = {name: (total / total_weight).astype(np.float32) for name, total in sums.items()}
    return result[""] if single else result


def _tile_offsets(tiles: list, positions: list, size: tuple) -> np.ndarray:
    """Per-tile offsets [N, C] minimising sum over overlapping pairs of n_ij |mean_ij(t_i + c_i - t_j - c_j)|^2
    (n_ij the overlap's pixel count), with sum c_i = 0."""
    count = len(tiles)
    channels = tiles[0].shape[-1]
    if count == 1:
        return np.zeros((1, channels))
    rows, rhs = [], []
    th, tw = size
    for i in range(count):
        ri, ci = positions[i]
        for j in range(i + 1, count):
            rj, cj = positions[j]
            top, bottom = max(ri, rj), min(ri, rj) + th
            left, right = max(ci, cj), min(ci, cj) + tw
            if bottom <= top or right <= left:
                continue
            a = tiles[i][top - ri:bottom - ri, left - ci:right - ci]
            b = tiles[j][top - rj:bottom - rj, left - cj:right - cj]
            scale = math.sqrt((bottom - top) * (right - left))
            row = np.zeros(count)
            row[i], row[j] = scale, -scale
            rows.append(row)
            rhs.append(scale * (b.mean(axis=(0, 1), dtype=np.float64) - a.mean(axis=(0, 1), dtype=np.float64)))
    # The gauge: offsets sum to zero (weighted like the largest pair term so it is enforced).
    rows.append(np.full(count, max((float(np.max(np.abs(r))) for r in rows), default=1.0)))
    rhs.append(np.zeros(channels))
    offsets, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return offsets
