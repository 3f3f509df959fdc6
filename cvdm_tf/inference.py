"""`cvdm-tf infer`: a trained run applied to measurements, with a pixel-wise uncertainty map.

For every input image NAME (a file, or each image of a stack; a folder is searched recursively, sorted) the
output folder gets
    NAME_mean.tif      float32 [H, W]: the mean of the K samples in the task's units (QPI: phase in radians)
    NAME_std.tif       float32 [H, W]: the pixel-wise standard deviation over the K samples, same units
    NAME_schedule.tif  float32 [H, W]: the schedule magnitude tau(y) * rho(1) (unitless; where the model
                       chose to diffuse harder)
    NAME_preview.png   input (first channel) | mean | std | schedule, each with its colour bar and min / max
    NAME_median.tif    with `--median`: the per-pixel median of the K samples (the estimate of least expected
                       absolute error, where the mean is that of least squared error), same units
    NAME_mean_network.tif  with `--mean-network` (models with a mean network): its estimate of E[x | y], no
                       samples, same units
The run's point estimate (`sampler.estimate`, chosen on validation images: the card's) is always written, and is
what the preview shows: NAME_median for a run whose estimate is the median, NAME_mean_network for the mean
network's.

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
    5. back to physical units with the task's (offset, scale); a task that refines samples against the whole
       measurement (QPI's data consistency) does so here, and mean and std come from the refined samples;
       outputs are written (atomically, with the output pixel size in the TIFF metadata) only after sampling
       succeeded.

A file that fails is reported and skipped; the others are finished (`InferReport.failed`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cvdm_tf import __version__, io
# The point estimates an image can have: the samples' mean, and their median and the mean network's (on request, or
# as the run's `sampler.estimate`).
from cvdm_tf.config import ESTIMATES
from cvdm_tf.data import sources
from cvdm_tf.errors import InputError
from cvdm_tf.previews import preview_image
from cvdm_tf.progress import InferProgress
from cvdm_tf.tiling import tiled_apply

__all__ = ["InferReport", "infer_paths", "reconstruct", "write_outputs", "OUTPUTS"]

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


def infer_paths(run_dir, input_path, out_dir, samples: int | None = None, steps: int | None = None,
                method: str | None = None, seed: int = 0, batch_size: int = 4, tile: int = 256,
                progress=None, reader_options: dict | None = None, precision: str | None = None,
                data=None, physics: dict | None = None, median: bool = False,
                mean_network: bool = False) -> InferReport:
    """Reconstruct every image of `input_path` (a file or a folder) with the run in `run_dir` into `out_dir`.

    Args:
        run_dir: path. A run folder of `cvdm-tf train` (EMA weights are used).
        input_path: path. An image/stack file or a folder (searched recursively; hidden files and the output
            folder itself are skipped).
        out_dir: path. Created if needed; outputs are named after the inputs (see the module docstring).
        samples: int or None. K, samples per image (the std is over these); None: the run's `sampler.samples`.
        steps: int or None. T sampling steps; None: the run's `sampler.steps`.
        method: "ddpm", "ddim" or None (the run's `sampler.method`).
        seed: int. Same seed, same inputs, same batch size -> same outputs.
        batch_size: int. Tiles sampled together.
        tile: int. Largest side sampled in one piece; larger images are tiled.
        progress: InferProgress or None (a new one on stderr).
        reader_options: dict. The task's reader options (QPI: a z-stack's z_step_um, defocus_um, focus).
        precision: "auto", "float32", "bfloat16" or None (the run's `sampler.precision`): the denoiser's compute
            dtype (`cvdm_tf.sampler.resolve_precision`).
        data: the task's data config to use instead of the run's (e.g. QPI's data_consistency changed), or None.
        physics: dict. The measurements' physics (`Task.physics_keys`, QPI: wavelength_um, pixel_size_um,
            defocus_um; None or absent: from each file's metadata, else the run's). Each file's is checked against
            the model's training range; a file outside it fails with one line naming the range.
        median: bool. Also write NAME_median (the per-pixel median of the K samples: the estimate of least
            expected absolute error).
        mean_network: bool. Also write NAME_mean_network (the mean network's E[x | y]; models that have one).

    Returns:
        InferReport. Bad files are listed in `failed` (also reported through `progress.error`), not raised.

    Raises:
        InputError: the input does not exist or holds no images, `run_dir` is not a run folder, or an option is
            out of range.
    """
    out_dir = Path(out_dir)
    _check_options(samples, steps, batch_size, tile, method)
    from cvdm_tf.runs import model_config

    # Before TensorFlow loads (seconds): a typo in a path fails at once.
    if not Path(input_path).exists():
        raise InputError(f"{os.fspath(input_path)}: no such file or folder")
    model_config(run_dir)
    from cvdm_tf import zarr_io
    from cvdm_tf.api import Model

    # Through the Python API's model: one compiled sampler for every file and tile.
    api_model = Model(run_dir, precision=precision, data=data)
    config, task, model = api_model.config, api_model.task, api_model.network
    if zarr_io.is_ome_zarr(input_path):
        if median or mean_network:
            raise InputError(f"--{'median' if median else 'mean-network'}: not available for OME-Zarr fields (they "
                             "are blended block by block from mean, std and schedule)")
        return _infer_ome_zarr(run_dir, input_path, out_dir, api_model, samples, steps, method, seed,
                               batch_size, tile, progress, physics or {})
    files = _input_files(input_path, out_dir, task)
    samples = samples or config.sampler.samples
    steps = steps or config.sampler.steps
    method = method or config.sampler.method
    if config.sampler.antithetic and samples % 2:
        raise InputError(f"--samples {samples}: this model samples in antithetic pairs (sampler.antithetic), so K "
                         "must be even")
    if mean_network and getattr(model, "mean_net", None) is None:
        raise InputError(f"--mean-network: {os.fspath(run_dir)} has no mean network (model.mean = "
                         f"{config.model.mean!r})")
    multiple = model.model_config.size_multiple
    if tile < multiple:
        raise InputError(f"--tile: must be at least the model's size multiple {multiple}, got {tile}")
    progress = progress or InferProgress(len(files))
    progress.batch_size = batch_size
    progress.message(f"K = {samples} samples of T = {steps} {method} steps per image")
    report = InferReport(out_dir=out_dir, files=len(files))
    made_by = _made_by(run_dir, samples, steps, method, seed)
    fit = api_model.recalibration(samples, steps, method)
    if fit is not None:
        made_by += f"; NAME_std_recalibrated: {fit.label()}"
        progress.message(f"NAME_std_recalibrated: the {fit.label()}")
    elif api_model.recalibrations:
        progress.message("no recalibration of the std map for this sampler setting (the run has: "
                         + "; ".join(entry.setting() for entry in api_model.recalibrations)
                         + "): NAME_std only (`cvdm-tf calibrate` fits one)")
    estimate = config.sampler.estimate  # written whatever the flags (`Model.reconstruct`), shown in the preview
    used: set[str] = set()
    try:
        for index, (path, base) in enumerate(files):
            progress.start_file(index, base)
            try:
                file_task, results = _reconstruct_file(path, base, used, api_model, samples, steps, method, seed,
                                                       tile, batch_size, progress, reader_options or {},
                                                       physics or {}, median, mean_network)
            except InputError as err:
                report.failed.append(str(err))
                progress.error(str(err))
                continue
            for name, raw, result in results:
                try:
                    report.written[name] = file_task.write_outputs(
                        out_dir, name, raw, result, source=path, made_by=made_by, estimate=estimate,
                        mean_network_estimate=config.model.mean_network_estimate)
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


def _made_by(run_dir, samples, steps, method, seed) -> str:
    """What made the outputs, for their metadata."""
    return (f"cvdm-tf {__version__} infer: model {os.fspath(run_dir)}, K = {samples} samples of T = {steps} "
            f"{method} steps, seed {seed}")


def _infer_ome_zarr(run_dir, input_path, out_dir, api_model, samples, steps, method, seed, batch_size, tile,
                    progress, physics) -> InferReport:
    """An OME-Zarr field, block by block (`zarr_io.reconstruct_field`), into NAME_mean / _std / _schedule.ome.zarr
    (written as hidden folders, renamed once complete)."""
    import shutil

    from cvdm_tf import zarr_io

    config, task = api_model.config, api_model.task
    if task.target_channels != 1:
        raise InputError(f"{os.fspath(input_path)}: OME-Zarr fields are for one-channel outputs (QPI, BioSR); "
                         f"this {task.name} model makes {task.target_channels}")
    samples = samples or config.sampler.samples
    steps = steps or config.sampler.steps
    method = method or config.sampler.method
    progress = progress or InferProgress(1)
    field, stated = zarr_io.open_field(input_path, task.measurement_channels)
    task = task.for_measurement(physics, stated, input_path, progress.message)
    try:
        task.check_physics()
    except InputError as err:
        raise InputError(f"{os.fspath(input_path)}: {err}") from None
    name = Path(input_path).name[: -len(".zarr")].removesuffix(".ome")
    final = {key: Path(out_dir) / f"{name}_{key}.ome.zarr" for key in zarr_io.OUTPUTS}
    for path in final.values():
        if path.exists():
            raise InputError(f"{path}: exists (remove it first)")
    partial = {key: path.with_name(f".{path.name}.partial") for key, path in final.items()}
    progress.message(f"K = {samples} samples of T = {steps} {method} steps per block of the field")
    if config.sampler.estimate != "mean":
        progress.message(f"this model's point estimate is its {config.sampler.estimate.replace('_', ' ')}; a field "
                         "gets the samples' mean (NAME_mean)")
    if api_model.recalibration(samples, steps, method) is not None:
        progress.message("the std map's recalibration (cvdm-tf calibrate) is not applied to a field: NAME_std only")
    progress.start_file(0, name)
    made_by = _made_by(run_dir, samples, steps, method, seed)
    description = "; ".join(part for part in (made_by, task.describe_physics()) if part)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    try:
        zarr_io.reconstruct_field(api_model.network, task, field, partial, samples, steps, method, seed, tile,
                                  batch_size, api_model.sampler, pixel_size_um=task.output_pixel_size_um,
                                  description=description, progress=progress.tiles)
        for key in zarr_io.OUTPUTS:
            os.replace(partial[key], final[key])
    finally:
        for path in partial.values():
            shutil.rmtree(path, ignore_errors=True)
    report = InferReport(out_dir=Path(out_dir), files=1)
    report.written[name] = [final[key] for key in zarr_io.OUTPUTS]
    progress.close(f"wrote {name}_mean / _std / _schedule.ome.zarr to {out_dir}")
    return report


def _reconstruct_file(path, base, used, api_model, samples, steps, method, seed, tile, batch_size, progress,
                      reader_options, physics, median=False, mean_network=False):
    """(the file's task, [(name, raw, result)] for every image of one file: a stack gives NAME_000, NAME_001, ...);
    all or nothing. The task carries the file's physics (given, or from its metadata), checked against the
    model's range before anything is sampled."""
    task, images = api_model.task.read_file(path, message=progress.message, physics=physics, **reader_options)
    try:
        task.check_physics()
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    results = []
    for number, raw in enumerate(images):
        try:
            # Sampled in chunks of about a tenth of the steps (the same samples as one call), so the progress
            # line moves within a tile.
            result = api_model.reconstruct(task, raw, samples=samples, steps=steps, method=method, seed=seed,
                                           tile=tile, batch_size=batch_size, progress=progress.tiles,
                                           chunk=max(1, steps // 10), step_progress=progress.steps,
                                           median=median, mean_network=mean_network)
        except InputError as err:
            where = f"{path} [image {number}]" if len(images) > 1 else f"{path}"
            raise InputError(f"{where}: {err}") from None
        results.append((f"{base}_{number:03d}" if len(images) > 1 else base, raw, result))
    # Names are claimed only once the whole file succeeded.
    return task, [(sources.unique_name(name, used), raw, result) for name, raw, result in results]


def write_outputs(out_dir: Path, name: str, raw: np.ndarray, result: dict, unit: str = "",
                  pixel_size_um: float | None = None, description: str = "", estimate: str = "mean",
                  mean_network_estimate: str = "E[x|y]") -> list[Path]:
    """NAME_mean.tif, NAME_std.tif, NAME_schedule.tif (OME-TIFF: pixel size, channel name with the unit,
    `description`), NAME_median.tif, NAME_mean_network.tif (its channel named by what the mean network
    estimates, `ModelConfig.mean_network_estimate`) and NAME_std_recalibrated.tif where `result` has them, and
    NAME_preview.png showing the point estimate `estimate` (a key of `result`), each written atomically."""
    paths = []
    channel = {key: f"{key} ({unit})" if unit else key for key in ("mean", "median", "std")}
    channel["std_recalibrated"] = "std recalibrated on validation images" + (f" ({unit})" if unit else "")
    channel["mean_network"] = f"{mean_network_estimate} of the mean network" + (f" ({unit})" if unit else "")
    channel["schedule"] = "schedule (tau rho(1), dimensionless)"
    for key in (*ESTIMATES, "std", "std_recalibrated", "schedule"):
        if key not in result:
            continue
        paths.append(io.write_tiff(out_dir / f"{name}_{key}.tif", result[key], pixel_size_um=pixel_size_um,
                                   channels=[channel[key]], description=description))
    preview = preview_image(raw, result[estimate], result["std"], result["schedule"], unit=unit, estimate=estimate)
    paths.append(io.write_png(out_dir / f"{name}_preview.png", preview))
    return paths


def _check_options(samples, steps, batch_size, tile, method):
    for option, value in (("--samples", samples), ("--batch-size", batch_size), ("--tile", tile)):
        if option == "--samples" and value is None:  # the run's sampler.samples
            continue
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
        return [(root, sources.image_name(root))]
    found = sources.list_images(root, suffixes=task.input_suffixes)
    # An output folder inside the input folder: earlier outputs are not inputs.
    out = out_dir.resolve()
    found = [p for p in found if out not in p.resolve().parents]
    # `cvdm-tf simulate` writes the truth beside each measurement: the truth is not an input.
    stems = {(p.parent, p.stem) for p in found}
    found = [p for p in found if not task.is_truth_file(p, stems)]
    if not found:
        raise InputError(f"{os.fspath(input_path)}: no images found outside the output folder {out_dir}")
    return [(p, sources.image_name(p, root)) for p in found]


# === One image ===

def reconstruct(model, task, raw_condition, samples: int = 8, steps: int = 200, method: str = "ddpm",
                seed: int = 0, tile: int = 256, batch_size: int = 4, progress: Callable | None = None,
                sampler=None, chunk: int | None = None, step_progress: Callable | None = None,
                physics: dict | None = None, keep_samples: bool = False, median: bool = False,
                mean_network: bool = False, estimate: str = "mean") -> dict:
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
        chunk: int or None. None: each batch of tiles is sampled in one compiled call. N: in runs of N steps, with
            `step_progress(done, steps)` called between them (it may raise to cancel: a GUI stops within N steps).
        step_progress: callable(done, steps) or None. Only with `chunk`; a regression run has no steps.
        physics: dict or None. The measurement's physics (`task.physics_keys`; QPI: wavelength_um, pixel_size_um,
            defocus_um in um), None values keeping the task's; checked against the model's training range.
        keep_samples: bool. Also return every sample.
        median: bool. Also return `median`, the per-pixel median of the K samples: the posterior median, the
            estimate of least expected absolute error (the mean is that of least squared error).
        mean_network: bool. Also return `mean_network`, the model's mean network's estimate (no samples): E[x | y]
            with its L2 loss (where the diffusion has converged, the samples' mean is a noisier estimate of it), the
            posterior median with L1 (`model.mean_loss`).
        estimate: str. The run's point estimate (`sampler.estimate`, one of `config.ESTIMATES`), returned
            whatever `median` / `mean_network` say.

    Returns:
        dict of float32 [H, W, C_target] on the output grid (H = task.scale * h): `mean` and `std` (over the K
        samples) in the task's units (QPI: radians) and `schedule` (tau * rho(1)); with `keep_samples`,
        `samples` [K, H, W, C_target] in the same units; with `median` / `mean_network`, those in the same units.

    Raises:
        InputError: wrong channel count, not an image, values that cannot be normalised, or a tile smaller than
            the model's size multiple (message without the file name; `infer_paths` adds it).
    """
    import tensorflow as tf

    from cvdm_tf.sampler import Sampler, sampler_for

    if physics:
        task = task.with_physics(**physics)
    task.check_physics()
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

    median = median or estimate == "median"
    mean_network = mean_network or estimate == "mean_network"
    sampler = sampler or sampler_for(model)
    if mean_network and getattr(model, "mean_net", None) is None:
        raise InputError("this model has no mean network (model.mean is neither \"network\" nor "
                         "\"condition+network\")")
    chunking = {"chunk": chunk, "callback": step_progress} if chunk and isinstance(sampler, Sampler) else {}
    calls = [0]

    def predict(batch):
        # A new seed per batch: tiles get independent noise; the same call sequence repeats exactly.
        call_seed = (seed + 7919 * calls[0]) % 2**31
        calls[0] += 1
        try:
            out = sampler(batch, steps=steps, samples=samples, seed=call_seed, method=method, **chunking)
        except tf.errors.ResourceExhaustedError:
            raise InputError(f"out of memory sampling {len(batch)} tile(s) of {batch.shape[1]} x {batch.shape[2]} "
                             "px (try a smaller --batch-size or --tile)") from None
        result = {"mean": out["mean"].numpy(), "std": out["std"].numpy(), "schedule": out["schedule"].numpy()}
        if mean_network:
            result["mean_network"] = out["mean_network"].numpy()
        if task.refines or keep_samples or median:
            # Every sample, as channels [B, h, w, K * C], blended and aligned like the mean.
            drawn = out["samples"].numpy() if "samples" in out else result["mean"][:, None]
            result["samples"] = np.moveaxis(drawn, 1, -2).reshape(drawn.shape[0], *drawn.shape[2:4], -1)
        return result

    # 4. Tiles (or the whole image as one tile).
    align = task.offset_free_outputs + (("samples", "mean_network") if "mean" in task.offset_free_outputs else ())
    blended = tiled_apply(predict, y, tile, batch_size=batch_size, progress=progress, align=align)
    crop = (slice(0, height), slice(0, width))
    # 5. Physical units. A task that refines (QPI's data consistency) gets each sample of the whole image; mean and
    # std are then taken anew from the refined samples.
    schedule = blended["schedule"][crop].astype(np.float32)
    drawn = None
    if task.refines or keep_samples or median:
        drawn = blended["samples"][crop]
        drawn = np.moveaxis(drawn.reshape(height, width, -1, model.model_config.target_channels), 2, 0)
        drawn = (drawn * scale + offset).astype(np.float32)
    if task.refines:
        drawn = np.asarray(task.refine(drawn, raw), np.float32)
        std = drawn.std(axis=0, ddof=sampler.std_ddof) if len(drawn) > 1 else np.zeros_like(drawn[0])
        result = {"mean": drawn.mean(axis=0), "std": std.astype(np.float32), "schedule": schedule}
    else:
        mean = (blended["mean"][crop] * scale + offset).astype(np.float32)
        # The std is blended like the mean (not as a variance): a weighted mean of per-tile estimates keeps their
        # expected value, so overlaps do not show up brighter (sqrt of an averaged variance would, by Jensen).
        std = (np.maximum(blended["std"][crop], 0.0) * np.abs(scale)).astype(np.float32)
        result = {"mean": mean, "std": std, "schedule": schedule}
    if median:
        result["median"] = np.median(drawn, axis=0).astype(np.float32)
    if mean_network:
        result["mean_network"] = (blended["mean_network"][crop] * scale + offset).astype(np.float32)
    if keep_samples:
        result["samples"] = drawn
    return result


