"""OME-Zarr in and out, for fields too large for memory: `cvdm-tf infer --input FIELD.zarr` reads the field a
block at a time and writes NAME_mean / _std / _schedule.ome.zarr block by block (optional extra `[zarr]`).

    field      level 0 of an OME-Zarr image (NGFF 0.4, `multiscales`): axes y, x and, for a multi-channel
               measurement, c first (QPI: the pair I(-dz), I(+dz) as c = 2); its y / x scale in a length unit is
               the pixel size (a `--pixel-size` flag wins)
    block      `block` x `block` px of the field (default 1024), read, reconstructed with `inference.reconstruct`
               (which tiles it as `cvdm-tf infer` tiles an image) and blended into the outputs; neighbouring
               blocks overlap by `overlap` px (default block / 8) and are blended with raised-cosine ramps
    outputs    NAME_KEY.ome.zarr, float32 on the output grid (task.scale times the field), chunks of 256 px,
               with the output pixel size as their scale; written as weighted sums, then divided by the weights

Each block is reconstructed as a measurement of its own (its own normalisation, and for QPI its own TIE channel
and refinement): a block is a camera frame of the wider field, as the QPI model's training pairs are. QPI's phase
is known only up to a constant per block: each block's mean and samples are shifted to agree, on average, with
what the blocks before it wrote into their overlap (raster order). Memory: one block of measurement, its K
samples, and the outputs' chunks it touches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from cvdm_tf.errors import InputError

CHUNK = 256
OUTPUTS = ("mean", "std", "schedule")
_UM_PER_UNIT = {"micrometer": 1.0, "micron": 1.0, "um": 1.0, "\u00b5m": 1.0, "nanometer": 1e-3, "nm": 1e-3,
                "millimeter": 1e3, "mm": 1e3}


def is_ome_zarr(path) -> bool:
    """Whether `path` is a folder holding an OME-Zarr image (a `.zarr` folder with zarr metadata)."""
    path = Path(path)
    return path.is_dir() and path.suffix.lower() == ".zarr" and any(
        (path / name).exists() for name in (".zattrs", ".zgroup", "zarr.json"))


def _zarr():
    try:
        import zarr
    except ImportError:
        raise InputError("OME-Zarr needs the optional extra: pip install 'cvdm-tf[zarr]'") from None
    return zarr


def open_field(path, channels: int):
    """(array [C, H, W] or [H, W] of level 0, read lazily; pixel size in um or None) of an OME-Zarr image.

    Raises:
        InputError: not an OME-Zarr image, axes other than (c,) y, x, or a channel count other than `channels`.
    """
    zarr = _zarr()
    name = os.fspath(path)
    try:
        group = zarr.open_group(name, mode="r")
        attrs = dict(group.attrs)
    except Exception as err:  # noqa: BLE001 - any reader failure is the file's problem
        raise InputError(f"{name}: not a readable OME-Zarr image ({err})") from None
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests its metadata under "ome"
    try:
        scales = ome["multiscales"][0]
        axes = [axis["name"] if isinstance(axis, dict) else axis for axis in scales["axes"]]
        dataset = scales["datasets"][0]
        array = group[dataset["path"]]
    except (KeyError, IndexError, TypeError) as err:
        raise InputError(f"{name}: no OME-Zarr multiscales image ({err!r} missing)") from None
    if axes not in (["y", "x"], ["c", "y", "x"]):
        raise InputError(f"{name}: axes {','.join(axes)}; expected y,x or c,y,x")
    count = array.shape[0] if axes[0] == "c" else 1
    if count != channels:
        raise InputError(f"{name}: has {count} channel(s), the model needs {channels}")
    return array, _pixel_size(scales, dataset, axes, name)


def _pixel_size(scales, dataset, axes, name) -> float | None:
    scale = next((t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"),
                 None)
    unit = next((a.get("unit") for a in scales["axes"] if isinstance(a, dict) and a.get("name") == "x"), None)
    if scale is None or unit is None:
        return None
    factor = _UM_PER_UNIT.get(str(unit).lower())
    if factor is None:
        return None
    value = float(scale[axes.index("x")]) * factor
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{name}: x scale {scale[axes.index('x')]!r} is not a positive length")
    return value


def create_output(path, shape, pixel_size_um: float | None, name: str, description: str = ""):
    """An empty float32 OME-Zarr image (NGFF 0.4, axes y, x; `pixel_size_um` as its scale) at `path`; its array."""
    zarr = _zarr()
    group = zarr.open_group(os.fspath(path), mode="w", zarr_format=2)
    array = group.create_array("0", shape=shape, chunks=(min(CHUNK, shape[0]), min(CHUNK, shape[1])),
                               dtype="float32", fill_value=0.0)
    axis = lambda n: {"name": n, "type": "space", **({"unit": "micrometer"} if pixel_size_um else {})}  # noqa: E731
    group.attrs["multiscales"] = [{
        "version": "0.4", "name": name, "axes": [axis("y"), axis("x")],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [pixel_size_um or 1.0, pixel_size_um or 1.0]}]}],
        "metadata": {"description": description}}]
    return array


def block_starts(size: int, block: int, overlap: int) -> list[int]:
    from cvdm_tf.tiling import tile_starts

    return tile_starts(size, min(block, size), overlap)


def reconstruct_field(model, task, field, out_paths: dict, samples: int, steps: int, method: str, seed: int,
                      tile: int, batch_size: int, sampler, block: int = 1024, overlap: int | None = None,
                      pixel_size_um: float | None = None, description: str = "",
                      progress: Callable | None = None) -> dict:
    """Reconstruct an OME-Zarr field block by block into the OME-Zarr images `out_paths` (key -> path).

    Args:
        field: array [C, H, W] or [H, W] (e.g. zarr), read one block at a time.
        block, overlap: block side and minimum overlap of neighbouring blocks, in px of the field.
        pixel_size_um: the outputs' pixel size (the task's output grid), or None.
        progress: callable(done, total) after each block, or None.
        Others: as `inference.reconstruct`.

    Returns:
        dict key -> the output zarr arrays.
    """
    import shutil

    height, width = field.shape[-2:]
    scale = task.scale
    overlap = max(block // 8, 1) if overlap is None else overlap
    rows, cols = block_starts(height, block, overlap), block_starts(width, block, overlap)
    bh, bw = min(block, height), min(block, width)
    shape = (height * scale, width * scale)
    outputs = {key: create_output(out_paths[key], shape, pixel_size_um, Path(out_paths[key]).name, description)
               for key in OUTPUTS}
    # The weights' sum, kept beside the outputs while they are written (removed at the end).
    weights_path = Path(out_paths["mean"]).with_name(f".{Path(out_paths['mean']).name}.weights")
    weights = create_output(weights_path, shape, None, "weights")
    try:
        _blend_blocks(model, task, field, outputs, weights, rows, cols, (bh, bw), overlap, samples, steps, method,
                      seed, tile, batch_size, sampler, progress)
        # Weighted sums -> weighted means, one chunk row at a time.
        for top in range(0, shape[0], CHUNK):
            rows_slice = slice(top, min(top + CHUNK, shape[0]))
            weight = np.maximum(np.asarray(weights[rows_slice]), 1e-12)
            for key in OUTPUTS:
                outputs[key][rows_slice] = np.asarray(outputs[key][rows_slice]) / weight
    finally:
        shutil.rmtree(weights_path, ignore_errors=True)
    return outputs


def _blend_blocks(model, task, field, outputs, weights, rows, cols, block_shape, overlap, samples, steps, method,
                  seed, tile, batch_size, sampler, progress):
    """Each block reconstructed, aligned (offset-free outputs) and added, weighted, to the outputs' sums."""
    from cvdm_tf.inference import reconstruct
    from cvdm_tf.tiling import blend_window

    height, width = field.shape[-2:]
    bh, bw = block_shape
    scale = task.scale
    aligned = "mean" in task.offset_free_outputs
    total, done = len(rows) * len(cols), 0
    for r in rows:
        for c in cols:
            raw = np.asarray(field[..., r:r + bh, c:c + bw], np.float32)
            raw = np.moveaxis(raw, 0, -1) if raw.ndim == 3 else raw[..., None]
            result = reconstruct(model, task, raw, samples=samples, steps=steps, method=method,
                                 seed=seed + 104729 * done, tile=tile, batch_size=batch_size, sampler=sampler)
            window = np.outer(blend_window(bh * scale, overlap * scale, r > 0, r + bh < height),
                              blend_window(bw * scale, overlap * scale, c > 0, c + bw < width)).astype(np.float32)
            region = (slice(r * scale, (r + bh) * scale), slice(c * scale, (c + bw) * scale))
            written = np.asarray(weights[region])
            values = {key: result[key][..., 0] for key in OUTPUTS}
            if aligned and (written > 0).any():
                # Agree with the blocks already written on their overlap, on average (the phase's free constant).
                seen = written > 0
                before = np.asarray(outputs["mean"][region])[seen] / written[seen]
                values["mean"] = values["mean"] + float(np.mean(before - values["mean"][seen]))
            for key in OUTPUTS:
                outputs[key][region] = np.asarray(outputs[key][region]) + window * values[key]
            weights[region] = written + window
            done += 1
            if progress is not None:
                progress(done, total)
