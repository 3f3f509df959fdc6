"""`cvdm-tf infer`: a trained run applied to measurements, with a pixel-wise uncertainty map.

For every input image NAME (a file, or each image of a stack; a folder is searched recursively, sorted) the
output folder gets
    NAME_mean.tif      float32 [H, W]: the mean of the K samples in the task's units (QPI: phase in radians)
    NAME_std.tif       float32 [H, W]: the pixel-wise standard deviation over the K samples, same units
    NAME_schedule.tif  float32 [H, W]: the schedule magnitude tau(y) * rho(1) (unitless; where the model
                       chose to diffuse harder)
    NAME_preview.png   input (first channel) | mean | std | schedule, each with its colour bar and min / max

One image, in order:
    1. read it with the task's reader (the readers refuse NaN/Inf, corrupt files, ...) and check its channel
       count against the task;
    2. make the condition of the WHOLE image with the task (normalisation, the task's estimate, and the output
       grid: 2x for super-resolution), so every tile of a large image sees what the full image would;
    3. images smaller than the model's size multiple are padded up (symmetric), the result cropped back;
    4. images larger than `tile` (output pixels) are cut into overlapping tiles (a quarter of a tile overlap),
       sampled in batches and blended with a separable raised-cosine window, normalised by the summed weights
       (`tiled_apply`); outputs the task calls offset-free (QPI's phase) get their per-tile offsets reconciled in
       the overlaps first;
    5. back to physical units with the task's (offset, scale); outputs are written (atomically, with the output
       pixel size in the TIFF metadata) only after sampling succeeded.

A file that fails is reported and skipped; the others are finished (`InferReport.failed`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cvdm_tf import io
from cvdm_tf.data import sources
from cvdm_tf.errors import InputError

__all__ = ["InferReport", "InferProgress", "infer_paths", "reconstruct", "tiled_apply", "tile_starts",
           "blend_window", "preview_image", "OUTPUTS"]

#: Output files per image NAME: NAME_<suffix>.
OUTPUTS = ("mean", "std", "schedule", "preview")


# === Files to outputs ===


@dataclass
class InferReport:
    """What `infer_paths` did: `written` maps each image name to its output files; `failed` holds one message per
    bad input file, starting with its path."""

    out_dir: Path
    written: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def infer_paths(run_dir, input_path, out_dir, samples: int = 8, steps: int | None = None,
                method: str | None = None, seed: int = 0, batch_size: int = 4, tile: int = 256,
                progress=None) -> InferReport:
    """Reconstruct every image of `input_path` (a file or a folder) with the run in `run_dir` into `out_dir`.

    Args:
        run_dir: path. A run folder of `cvdm-tf train` (EMA weights are used).
        input_path: path. An image/stack file or a folder (searched recursively; hidden files and the output
            folder itself are skipped).
        out_dir: path. Created if needed; outputs are named after the inputs (see the module docstring).
        samples: int. K, samples per image (the std is over these).
        steps: int or None. T sampling steps; None: the run's `sampler.steps`.
        method: "ddpm", "ddim" or None (the run's `sampler.method`).
        seed: int. Same seed, same inputs, same batch size -> same outputs.
        batch_size: int. Tiles sampled together.
        tile: int. Largest side sampled in one piece; larger images are tiled.
        progress: InferProgress or None (a new one on stderr).

    Returns:
        InferReport. Bad files are listed in `failed` (also reported through `progress.error`), not raised.

    Raises:
        InputError: the input does not exist or holds no images, `run_dir` is not a run folder, or an option is
            out of range.
    """
    out_dir = Path(out_dir)
    _check_options(samples, steps, batch_size, tile, method)
    from cvdm_tf.runs import load_run
    from cvdm_tf.sampler import Sampler

    if not Path(input_path).exists():  # before loading the model: a typo fails fast
        raise InputError(f"{os.fspath(input_path)}: no such file or folder")
    config, task, model = load_run(run_dir)
    files = _input_files(input_path, out_dir, task)
    steps = steps or config.sampler.steps
    method = method or config.sampler.method
    multiple = model.model_config.size_multiple
    if tile < multiple:
        raise InputError(f"--tile: must be at least the model's size multiple {multiple}, got {tile}")
    sampler = Sampler(model)  # one compiled graph for every file and tile
    progress = progress or InferProgress(len(files))
    report = InferReport(out_dir=out_dir, files=len(files))
    used: set[str] = set()
    try:
        for index, (path, base) in enumerate(files):
            progress.start_file(index, base)
            try:
                results = _reconstruct_file(path, base, used, model, task, sampler, samples, steps, method, seed,
                                            tile, batch_size, progress)
            except InputError as err:
                report.failed.append(str(err))
                progress.error(str(err))
                continue
            for name, raw, result in results:
                try:
                    report.written[name] = write_outputs(out_dir, name, raw, result, unit=task.target_unit,
                                                         pixel_size_um=task.output_pixel_size_um)
                except OSError as err:
                    message = f"{path}: cannot write the outputs of {name} to {out_dir} ({err.strerror or err})"
                    report.failed.append(message)
                    progress.error(message)
    except KeyboardInterrupt:
        # Every output is written atomically: what exists is complete.
        progress.close(f"interrupted; {len(report.written)} complete reconstruction(s) in {out_dir}")
        raise
    progress.close(f"wrote {len(report.written)} reconstruction(s) to {out_dir}"
                   + (f"; {len(report.failed)} of {len(files)} file(s) failed" if report.failed else ""))
    return report


def _reconstruct_file(path, base, used, model, task, sampler, samples, steps, method, seed, tile, batch_size,
                      progress):
    """[(name, raw, result)] for every image of one file (a stack gives NAME_000, NAME_001, ...); all or nothing."""
    images = task.read_measurements(path)
    results = []
    for number, raw in enumerate(images):
        try:
            result = reconstruct(model, task, raw, samples=samples, steps=steps, method=method, seed=seed,
                                 tile=tile, batch_size=batch_size, progress=progress.tiles, sampler=sampler)
        except InputError as err:
            where = f"{path} [image {number}]" if len(images) > 1 else f"{path}"
            raise InputError(f"{where}: {err}") from None
        results.append((f"{base}_{number:03d}" if len(images) > 1 else base, raw, result))
    # Names are claimed only once the whole file succeeded.
    return [(sources.unique_name(name, used), raw, result) for name, raw, result in results]


def write_outputs(out_dir: Path, name: str, raw: np.ndarray, result: dict, unit: str = "",
                  pixel_size_um: float | None = None) -> list[Path]:
    """NAME_mean.tif, NAME_std.tif, NAME_schedule.tif and NAME_preview.png, each written atomically."""
    paths = []
    for key in ("mean", "std", "schedule"):
        paths.append(io.write_tiff(out_dir / f"{name}_{key}.tif", result[key], pixel_size_um=pixel_size_um))
    preview = preview_image(raw[..., 0], result["mean"][..., 0], result["std"][..., 0],
                            result["schedule"][..., 0], unit=unit)
    paths.append(io.write_png(out_dir / f"{name}_preview.png", preview))
    return paths


def _check_options(samples, steps, batch_size, tile, method):
    for option, value in (("--samples", samples), ("--batch-size", batch_size), ("--tile", tile)):
        if not (isinstance(value, int) and value >= 1):
            raise InputError(f"{option}: must be a positive integer, got {value!r}")
    if steps is not None and not (isinstance(steps, int) and steps >= 1):
        raise InputError(f"--steps: must be a positive integer, got {steps!r}")
    if method not in (None, "ddpm", "ddim"):
        raise InputError(f"--sampler: must be ddpm or ddim, got {method!r}")


def _input_files(input_path, out_dir: Path, task) -> list[tuple[Path, str]]:
    """(path, output base name) per input file; a folder's names join sub-folders with `_` (`sub/a.tif` -> `sub_a`)."""
    root = Path(input_path)
    if not root.exists():
        raise InputError(f"{os.fspath(input_path)}: no such file or folder")
    if not root.is_dir():
        return [(root, root.stem)]
    found = sources.list_images(root, suffixes=task.input_suffixes)
    # An output folder inside the input folder: earlier outputs are not inputs.
    out = out_dir.resolve()
    found = [p for p in found if out not in p.resolve().parents]
    # `cvdm-tf simulate` writes the truth beside each measurement: the truth is not an input.
    stems = {(p.parent, p.stem) for p in found}
    found = [p for p in found if not task.is_truth_file(p, stems)]
    if not found:
        raise InputError(f"{os.fspath(input_path)}: no images found outside the output folder {out_dir}")
    return [(p, "_".join(p.relative_to(root).with_suffix("").parts)) for p in found]


# === One image ===

def reconstruct(model, task, raw_condition, samples: int = 8, steps: int = 200, method: str = "ddpm",
                seed: int = 0, tile: int = 256, batch_size: int = 4, progress: Callable | None = None,
                sampler=None) -> dict:
    """Sample the model for one raw measurement and return the result in physical units.

    Args:
        model: CVDM (e.g. from `runs.load_run`).
        task: the run's task (normalises the condition, denormalises the result).
        raw_condition: array [h, w, C_m]. The raw measurement (QPI: the intensity pair as `cvdm-tf simulate` writes
            it; BioSR: a widefield image), any h x w.
        samples, steps, method, seed: K, T, "ddpm" / "ddim" and the random seed of the sampler.
        tile: int. Largest side sampled in one piece; larger images are tiled (`tiled_apply`).
        batch_size: int. Tiles per sampler call.
        progress: callable(done, total) or None, called after each batch of tiles.
        sampler: `cvdm_tf.sampler.Sampler` of `model` or None (a new one). Pass one to reuse its compiled graph
            over many images (it is traced once, for any image size).

    Returns:
        dict of float32 [H, W, C_target] on the output grid (H = task.scale * h): `mean` and `std` (over the K
        samples) in the task's units (QPI: radians) and `schedule` (tau * rho(1)).

    Raises:
        InputError: wrong channel count, not an image, values that cannot be normalised, or a tile smaller than
            the model's size multiple (message without the file name; `infer_paths` adds it).
    """
    import tensorflow as tf

    from cvdm_tf.sampler import Sampler

    raw = np.asarray(raw_condition, dtype=np.float32)
    if raw.ndim != 3:
        raise InputError(f"expected one image [H, W, C], got an array of shape {raw.shape}")
    if raw.shape[-1] != task.measurement_channels:
        raise InputError(f"has {raw.shape[-1]} channel(s), the model needs {task.measurement_channels} "
                         f"({task.describe_measurement()})")
    # 2. The whole image at once: tiles must share the image's normalisation (QPI: its mean intensity and the TIE
    # estimate, a global Fourier-space solve; BioSR: its percentiles) and its (offset, scale) to physical units.
    y = np.asarray(task.condition(tf.constant(raw)), dtype=np.float32)
    offset, scale = (np.asarray(v, np.float32) for v in task.units(tf.constant(raw)))
    if y.shape[-1] != model.model_config.condition_channels:
        raise InputError(f"the run's task gives {y.shape[-1]} condition channel(s), its model takes "
                         f"{model.model_config.condition_channels} (a damaged run folder?)")
    if not (np.isfinite(y).all() and np.isfinite(offset).all() and np.isfinite(scale).all()):
        raise InputError("pixel values too large to normalise (the condition is not finite)")
    # 3. Symmetric padding up to the size multiple (the sampler's own padding needs pad <= size).
    height, width = y.shape[:2]
    multiple = model.model_config.size_multiple
    if tile < multiple:
        raise InputError(f"tile: must be at least the model's size multiple {multiple}, got {tile}")
    pad_h, pad_w = max(multiple - height, 0), max(multiple - width, 0)
    if pad_h or pad_w:
        y = np.pad(y, [(0, pad_h), (0, pad_w), (0, 0)], mode="symmetric")

    sampler = sampler or Sampler(model)
    calls = [0]

    def predict(batch):
        # A new seed per batch: tiles get independent noise; the same call sequence repeats exactly.
        call_seed = (seed + 7919 * calls[0]) % 2**31
        calls[0] += 1
        try:
            out = sampler(batch, steps=steps, samples=samples, seed=call_seed, method=method)
        except tf.errors.ResourceExhaustedError:
            raise InputError(f"out of memory sampling {len(batch)} tile(s) of {batch.shape[1]} x {batch.shape[2]} "
                             "px (try a smaller --batch-size or --tile)") from None
        return {"mean": out["mean"].numpy(), "std": out["std"].numpy(), "schedule": out["schedule"].numpy()}

    # 4. Tiles (or the whole image as one tile).
    blended = tiled_apply(predict, y, tile, batch_size=batch_size, progress=progress,
                          align=task.offset_free_outputs)
    crop = (slice(0, height), slice(0, width))
    # 5. Physical units.
    mean = (blended["mean"][crop] * scale + offset).astype(np.float32)
    # The std is blended like the mean (not as a variance): a weighted mean of per-tile estimates keeps their
    # expected value, so overlaps do not show up brighter (sqrt of an averaged variance would, by Jensen).
    std = (np.maximum(blended["std"][crop], 0.0) * np.abs(scale)).astype(np.float32)
    return {"mean": mean, "std": std, "schedule": blended["schedule"][crop].astype(np.float32)}


# === Tiling ===


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


# === Progress ===


class InferProgress:
    """One status line on stderr: file i/n, its tiles, elapsed time and ETA. Redrawn in place on a terminal; a
    line per file (and every few seconds during a large one) elsewhere. Errors get their own `error: ...` line."""

    def __init__(self, files: int, stream=None, interval_s: float = 10.0):
        self.files = files
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = interval_s
        self.began = time.monotonic()
        self.last_line = -math.inf
        self.index, self.name = 0, ""

    def start_file(self, index: int, name: str):
        self.index, self.name = index, name
        self.tiles(0, 1, force=self.tty)

    def tiles(self, done: int, total: int, force: bool = False):
        """Called after each batch of tiles of the current file."""
        fraction = (self.index + done / max(total, 1)) / max(self.files, 1)
        elapsed = time.monotonic() - self.began
        eta = elapsed / fraction * (1 - fraction) if fraction > 0 else 0.0
        width = 20
        bar = "#" * int(width * fraction) + "." * (width - int(width * fraction))
        tiles = f" tile {done}/{total}" if total > 1 else ""
        line = (f"file {self.index + 1}/{self.files} {self.name}{tiles} [{bar}] "
                f"| {_clock(elapsed)} elapsed, ETA {_clock(eta)}")
        finished = done >= total and total > 0
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + line)
        elif force or finished or now - self.last_line >= self.interval_s:
            self.stream.write(line + "\n")
            self.last_line = now
        else:
            return
        self.stream.flush()

    def error(self, message: str):
        self.stream.write(("\r\033[K" if self.tty else "") + f"error: {message}\n")
        self.stream.flush()

    def close(self, message: str):
        self.stream.write(("\r\033[K" if self.tty else "") + message + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# === Preview ===

# A 3 x 5 bitmap font (drawn at twice the size): digits, capitals and what numbers and titles need.
_GLYPHS = {
    "0": "###|#.#|#.#|#.#|###", "1": ".#.|##.|.#.|.#.|###", "2": "###|..#|###|#..|###",
    "3": "###|..#|.##|..#|###", "4": "#.#|#.#|###|..#|..#", "5": "###|#..|###|..#|###",
    "6": "###|#..|###|#.#|###", "7": "###|..#|..#|.#.|.#.", "8": "###|#.#|###|#.#|###",
    "9": "###|#.#|###|..#|###", "A": ".#.|#.#|###|#.#|#.#", "B": "##.|#.#|##.|#.#|##.",
    "C": ".##|#..|#..|#..|.##", "D": "##.|#.#|#.#|#.#|##.", "E": "###|#..|##.|#..|###",
    "F": "###|#..|##.|#..|#..", "G": ".##|#..|#.#|#.#|.##", "H": "#.#|#.#|###|#.#|#.#",
    "I": "###|.#.|.#.|.#.|###", "J": "..#|..#|..#|#.#|.#.", "K": "#.#|#.#|##.|#.#|#.#",
    "L": "#..|#..|#..|#..|###", "M": "#.#|###|###|#.#|#.#", "N": "##.|#.#|#.#|#.#|#.#",
    "O": ".#.|#.#|#.#|#.#|.#.", "P": "##.|#.#|##.|#..|#..", "Q": ".#.|#.#|#.#|##.|.##",
    "R": "##.|#.#|##.|#.#|#.#", "S": ".##|#..|.#.|..#|##.", "T": "###|.#.|.#.|.#.|.#.",
    "U": "#.#|#.#|#.#|#.#|###", "V": "#.#|#.#|#.#|#.#|.#.", "W": "#.#|#.#|###|###|#.#",
    "X": "#.#|#.#|.#.|#.#|#.#", "Y": "#.#|#.#|.#.|.#.|.#.", "Z": "###|..#|.#.|#..|###",
    ".": "...|...|...|...|.#.", "-": "...|...|###|...|...", "+": "...|.#.|###|.#.|...",
    "(": "..#|.#.|.#.|.#.|..#", ")": "#..|.#.|.#.|.#.|#..", "[": ".##|.#.|.#.|.#.|.##",
    "]": "##.|.#.|.#.|.#.|##.", ":": "...|.#.|...|.#.|...", "/": "..#|..#|.#.|#..|#..",
    "*": "...|#.#|.#.|#.#|...", "=": "...|###|...|###|...", " ": "...|...|...|...|...",
    "<": "..#|.#.|#..|.#.|..#", ">": "#..|.#.|..#|.#.|#..",
}
_SCALE = 2
_CHAR_W, _CHAR_H = 4 * _SCALE, 5 * _SCALE  # 3 px glyph + 1 px space

# Colour maps as anchors evenly spaced on [0, 1] (sampled from matplotlib's perceptually uniform maps).
_COLORMAPS = {
    "gray": [(0, 0, 0), (255, 255, 255)],
    "viridis": [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
    "magma": [(0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191)],
    "cividis": [(0, 34, 78), (64, 77, 107), (124, 123, 120), (188, 175, 111), (255, 234, 70)],
}


def _text_mask(text: str) -> np.ndarray:
    """Boolean [10, 8 * len] bitmap of `text` (upper-cased; unknown characters become spaces)."""
    columns = []
    for char in text.upper():
        rows = _GLYPHS.get(char, _GLYPHS[" "]).split("|")
        glyph = np.array([[c == "#" for c in row] + [False] for row in rows])
        columns.append(np.kron(glyph, np.ones((_SCALE, _SCALE), bool)).astype(bool))
    if not columns:
        return np.zeros((_CHAR_H, 0), bool)
    return np.concatenate(columns, axis=1)


def _draw_text(canvas: np.ndarray, text: str, row: int, col: int, color=(0, 0, 0)):
    mask = _text_mask(text)
    mask = mask[: canvas.shape[0] - row, : max(canvas.shape[1] - col, 0)]
    canvas[row:row + mask.shape[0], col:col + mask.shape[1]][mask] = color


def _colorize(values: np.ndarray, low: float, high: float, cmap: str) -> np.ndarray:
    """float [H, W] -> uint8 RGB [H, W, 3] through a colour map scaled to [low, high]."""
    anchors = np.array(_COLORMAPS[cmap], np.float64)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values, np.float64)
    scaled = np.clip(scaled, 0.0, 1.0) * (len(anchors) - 1)
    grid = np.arange(len(anchors))
    rgb = np.stack([np.interp(scaled, grid, anchors[:, k]) for k in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def _format(value: float, digits: int = 3) -> str:
    text = f"{value:.{digits}g}"
    return "0" if text in ("-0", "0") else text.replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


def _display_size(height: int, width: int, smallest: int = 128, largest: int = 384) -> tuple[int, int]:
    """Panels are enlarged by a whole factor up to about `smallest` px, or shrunk to `largest` px (long side)."""
    side = max(height, width)
    if side < smallest:
        factor = max(1, min(smallest // side, 16))
        return height * factor, width * factor
    if side > largest:
        return max(1, round(height * largest / side)), max(1, round(width * largest / side))
    return height, width


def _panel(values: np.ndarray, title: str, cmap: str) -> np.ndarray:
    """Title, the image in its colour map, a colour bar and its low / high labels, on white."""
    from skimage.transform import resize

    values = np.asarray(values, np.float64)
    # A robust range (0.5 / 99.5 percentiles), so a few hot pixels do not flatten the panel; a label says "<" or
    # ">" where values beyond it are shown saturated.
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    # 3 significant digits, more where a narrow range needs them to tell the two ends apart.
    digits = next((d for d in range(3, 7) if _format(low, d) != _format(high, d)), 3)
    low_text = ("<" if values.min() < low else "") + _format(low, digits)
    high_text = (">" if values.max() > high else "") + _format(high, digits)
    height, width = values.shape
    dh, dw = _display_size(height, width)
    if (dh, dw) != (height, width):
        if dh >= height:  # enlarge: whole pixels, no blur
            shown = np.repeat(np.repeat(values, dh // height, axis=0), dw // width, axis=1)
        else:
            shown = resize(values, (dh, dw), order=1, anti_aliasing=True, preserve_range=True)
    else:
        shown = values
    margin, bar_h = 6, 10
    panel_w = max(shown.shape[1], len(title) * _CHAR_W, (len(low_text) + len(high_text) + 2) * _CHAR_W) + 2 * margin
    title_h = _CHAR_H + 2 * margin
    panel_h = title_h + shown.shape[0] + margin + bar_h + 3 + _CHAR_H + margin
    canvas = np.full((panel_h, panel_w, 3), 255, np.uint8)
    _draw_text(canvas, title, margin, margin)
    left = (panel_w - shown.shape[1]) // 2
    canvas[title_h:title_h + shown.shape[0], left:left + shown.shape[1]] = _colorize(shown, low, high, cmap)
    # The colour bar spans the panel (less margins), low on the left; a frame and end ticks make it readable.
    bar_top = title_h + shown.shape[0] + margin
    bar_w = panel_w - 2 * margin
    ramp = np.tile(np.linspace(low, high, bar_w), (bar_h, 1))
    canvas[bar_top:bar_top + bar_h, margin:margin + bar_w] = _colorize(ramp, low, high, cmap)
    canvas[bar_top - 1, margin - 1:margin + bar_w + 1] = 0
    canvas[bar_top + bar_h, margin - 1:margin + bar_w + 1] = 0
    canvas[bar_top - 1:bar_top + bar_h + 3, margin - 1] = 0
    canvas[bar_top - 1:bar_top + bar_h + 3, margin + bar_w] = 0
    label_row = bar_top + bar_h + 4
    _draw_text(canvas, low_text, label_row, margin)
    _draw_text(canvas, high_text, label_row, margin + bar_w - len(high_text) * _CHAR_W + _SCALE)
    return canvas


def preview_image(condition: np.ndarray, mean: np.ndarray, std: np.ndarray, schedule: np.ndarray,
                  unit: str = "") -> np.ndarray:
    """uint8 RGB strip: input (first channel, grey) | mean (viridis) | std (magma) | schedule (cividis), each
    titled, with a colour bar labelled with its low / high values (the 0.5 / 99.5 percentiles; `<` / `>` mark a
    saturated end). Small images are enlarged by a whole factor, large ones shrunk."""
    suffix = f" [{unit}]" if unit else ""
    panels = [
        _panel(condition, "input ch 1", "gray"),
        _panel(mean, "mean" + suffix, "viridis"),
        _panel(std, "std" + suffix, "magma"),
        _panel(schedule, "schedule", "cividis"),
    ]
    height = max(p.shape[0] for p in panels)
    gap = np.full((height, 4, 3), 200, np.uint8)
    strip = []
    for panel in panels:
        padded = np.full((height, panel.shape[1], 3), 255, np.uint8)
        padded[: panel.shape[0]] = panel
        strip += [padded, gap]
    return np.concatenate(strip[:-1], axis=1)
