"""Export a trained run as a TensorFlow SavedModel with the whole sampler inside.

The exported module takes the raw measurement and returns physical units, so a server needs nothing of this
package: the graph holds, in order,

    1. the task's condition of the raw measurement (QPI: the intensity pair divided by its mean intensity, and
       the TIE estimate; BioSR: the percentile-normalised widefield image upsampled to the 2x grid);
    2. the sampling loop of `cvdm_tf.sampler.Sampler` (one `tf.while_loop` over the T steps, K samples per
       condition, stateless noise seeded by (seed, step));
    3. the task's (offset, scale) to physical units (QPI: radians; BioSR: the input's intensity units); the
       schedule map tau * rho(1) as is;
    4. the task's refinement of each sample against the measurement, when its config asks (QPI:
       `data.data_consistency`), and the mean and std of the refined samples;
    5. the run's point estimate (`sampler.estimate`): the mean, the per-pixel median of the samples, or the mean
       network's own output;
    6. where the run has a recalibration of its std map for serving_default's K, T and sampler (`cvdm-tf
       calibrate`), `std_recalibrated`: the std times the factor of each pixel's level in its image
       (`cvdm_tf.recalibration`).

Signatures (QPI adds the measurement's physics, float32 scalars in um, after the other inputs: wavelength_um,
pixel_size_um, defocus_um; outside the model's training range the call fails with an error naming the range):

    serving_default(condition[, physics])                 -> mean, std, schedule, estimate      T, K, seed fixed
                                                             (and std_recalibrated, see 6.)
    sample(condition, steps, samples, seed[, physics])    -> mean, std, schedule, estimate, samples

condition is the raw measurement, float32 [batch, h, w, C_in] for any h and w (QPI: the intensity pair
(I(-dz), I(+dz)), C_in = 2; BioSR: a widefield image, C_in = 1); mean, std, schedule and estimate are float32
[batch, H, W, C_out] on the output grid (H = h for QPI, 2h for BioSR); samples is [batch, K, H, W, C_out]. The resolved config of the run travels with the export as `assets/cvdm_config.toml`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from cvdm_tf.config import dump_config
from cvdm_tf.errors import InputError
from cvdm_tf.io import _umask
from cvdm_tf.sampler import sample_median, sample_std, sampler_for

CONFIG_ASSET = "cvdm_config.toml"


class ExportedSampler(tf.Module):
    """Raw condition in, physical units out: normalisation, the sampler and de-normalisation as one module.

    Args:
        model: CVDM. Restored with the weights to export (EMA, as `load_run` gives them).
        task: the task (a `cvdm_tf.tasks.base.Task`). Its `condition` and `units` are traced into the graph, so
            they must be pure TensorFlow.
        steps: int. T of `serving_default`.
        samples: int. K of `serving_default`.
        method: str. "ddpm" (ancestral) or "ddim" (deterministic), for both signatures.
        seed: int. Seed of `serving_default`'s noise.
        sampler_config: SamplerConfig or None. The run's discretisation and time grid (default: exact, uniform).
        physics_inputs: bool. The measurement's physics as inputs after the condition (`task.physics_keys`); False:
            the task's own physics, fixed (bioimage.io packages: one input).
        stacked: bool. `serving_default` returns one tensor, "reconstruction" [batch, H, W, 3 C_out]: the point
            estimate, std and schedule as channels (bioimage.io packages: its TensorFlow runner reads a dict of
            outputs by position, and a restored SavedModel's dict order changes from process to process).
        estimate: str. The run's point estimate (`sampler.estimate`: "mean", "median" or "mean_network").
        recalibration: `cvdm_tf.recalibration.Recalibration` of `steps`, `samples` and `method`, or None:
            `serving_default` also returns `std_recalibrated` (not with `stacked`).
    """

    def __init__(self, model, task, steps: int, samples: int, method: str = "ddpm", seed: int = 0,
                 sampler_config=None, name: str = "cvdm", physics_inputs: bool = True, stacked: bool = False,
                 estimate: str = "mean", recalibration=None):
        super().__init__(name=name)
        if method not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {method!r} (ddpm or ddim)")
        if estimate == "mean_network" and getattr(model, "mean_net", None) is None:
            raise ValueError("estimate \"mean_network\": this model has no mean network")
        self.estimate = estimate
        self.sampler = sampler_for(model, sampler_config)
        self._task = task  # plain Python: only its TensorFlow functions are traced, nothing of it is saved
        self.steps, self.samples, self.seed, self.method = int(steps), int(samples), int(seed), method
        self.stacked = stacked
        if recalibration is not None and not recalibration.matches(self.samples, self.steps, method,
                                                                   getattr(self.sampler, "antithetic", False)):
            raise ValueError(f"the recalibration is for {recalibration.setting()}, not K = {samples}, T = {steps}")
        self.factors = None if recalibration is None else tf.constant(recalibration.scales, tf.float32)
        # The raw measurement, before normalize_condition (which may add channels, e.g. QPI's TIE estimate).
        channels = task.measurement_channels
        condition = tf.TensorSpec([None, None, None, channels], tf.float32, name="condition")
        scalar = lambda name, dtype=tf.int32: tf.TensorSpec([], dtype, name=name)  # noqa: E731
        # The measurement's physics (QPI: wavelength_um, pixel_size_um, defocus_um), one value per call.
        physics = [scalar(key, tf.float32) for key in task.physics_keys] if physics_inputs else []
        self.serve = tf.function(self._serve, input_signature=[condition, *physics])
        self.sample = tf.function(
            self._sample, input_signature=[condition, scalar("steps"), scalar("samples"), scalar("seed"), *physics]
        )

    def _sample(self, condition, steps, samples, seed, *physics):
        # The task for this measurement's physics; a graph assertion names the training range when it lies outside.
        task = self._task.with_physics_tensors(*physics) if physics else self._task
        out = self.sampler.sample(task.condition(condition), steps, samples, seed, tf.constant(self.method == "ddim"))
        offset, scale = task.units(condition)
        # The channel count is static, so the signatures state it ([-1, -1, -1, C_out] in saved_model_cli).
        image = lambda v: tf.ensure_shape(v, [None, None, None, task.target_channels])  # noqa: E731
        drawn = out["samples"] * scale[:, None] + offset[:, None]
        mean, std = out["mean"] * scale + offset, out["std"] * tf.abs(scale)
        if task.refines:  # as `inference.reconstruct`: each sample refined, then mean and std taken anew
            drawn = task.refine(drawn, condition)
            mean, std = tf.reduce_mean(drawn, axis=1), sample_std(drawn, ddof=self.sampler.std_ddof)
        if self.estimate == "median":
            estimate = sample_median(drawn)
        elif self.estimate == "mean_network":
            estimate = out["mean_network"] * scale + offset
        else:
            estimate = mean
        mean = image(mean)
        return {
            "mean": mean,
            "estimate": image(estimate),
            "std": image(std),
            # Target-shaped already; broadcast so the contract [batch, H, W, C_out] holds for every schedule kind.
            "schedule": image(tf.broadcast_to(out["schedule"], tf.shape(mean))),
            "samples": tf.ensure_shape(drawn, [None, None, None, None, task.target_channels]),
        }

    def _serve(self, condition, *physics):
        out = self._sample(condition, tf.constant(self.steps), tf.constant(self.samples), tf.constant(self.seed),
                           *physics)
        if self.stacked:
            return {"reconstruction": tf.concat([out["estimate"], out["std"], out["schedule"]], axis=-1)}
        served = {name: out[name] for name in ("mean", "std", "schedule", "estimate")}
        if self.factors is not None:
            served["std_recalibrated"] = self._recalibrated(out["mean"], out["std"])
        return served

    def _recalibrated(self, mean, std):
        """`Recalibration.apply` per image of the batch: the level (m - min m) / (max m - min m) picks the bin."""
        low = tf.reduce_min(mean, axis=[1, 2, 3], keepdims=True)
        level = tf.math.divide_no_nan(mean - low, tf.reduce_max(mean, axis=[1, 2, 3], keepdims=True) - low)
        bins = tf.shape(self.factors)[0]
        index = tf.clip_by_value(tf.cast(level * tf.cast(bins, tf.float32), tf.int32), 0, bins - 1)
        return std * tf.gather(self.factors, index)


def export_run(run_dir, out_dir, steps: int | None = None, samples: int | None = None, seed: int = 0) -> Path:
    """Export the run in `run_dir` (EMA weights) as a SavedModel in `out_dir`, written atomically.

    Args:
        run_dir: path. A run folder of `cvdm-tf train`.
        out_dir: path. The SavedModel folder to create; must not exist or be empty.
        steps: int. T of `serving_default` (default: the run's sampler.steps).
        samples: int. K of `serving_default` (default: the run's sampler.samples).
        seed: int. Seed of `serving_default`'s noise.

    Returns:
        Path: `out_dir`.

    Raises:
        InputError: `run_dir` is not a run folder, `out_dir` exists and is not an empty folder, or steps / samples
            are not positive.
    """
    from cvdm_tf import recalibration
    from cvdm_tf.runs import load_run  # runs imports the training stack; keep `import cvdm_tf.export` light

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    for key, value in (("steps", steps), ("samples", samples)):
        if value is not None and value < 1:
            raise InputError(f"--{key}: must be >= 1, got {value}")
    config, task, model = load_run(run_dir)
    steps, samples = steps or config.sampler.steps, samples or config.sampler.samples
    module = ExportedSampler(
        model, task,
        steps=steps,
        samples=samples,
        method=config.sampler.method,
        seed=seed,
        sampler_config=config.sampler,
        estimate=config.sampler.estimate,
        recalibration=recalibration.find(recalibration.of_run(run_dir), config.sampler, samples, steps),
    )
    save(module, dump_config(config), out_dir)
    return out_dir


def save(module: ExportedSampler, config_text: str, out_dir) -> Path:
    """tf.saved_model.save `module` with both signatures and `config_text` as an asset, atomically: into a hidden
    temporary sibling folder first, renamed onto `out_dir` only once complete."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            config_file = Path(scratch) / CONFIG_ASSET
            config_file.write_text(config_text, encoding="utf-8")
            # Tracked as an attribute, the asset is copied to assets/ and reachable as `loaded.config_file`.
            module.config_file = tf.saved_model.Asset(str(config_file))
            tf.saved_model.save(
                module, str(tmp),
                signatures={"serving_default": module.serve, "sample": module.sample},
            )
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private; the export is not
        _check_out_dir(out_dir)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked): rename needs the name free on every OS
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_out_dir(out_dir: Path):
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            raise InputError(f"{out_dir}: output folder exists and is not empty")
    elif out_dir.exists():
        raise InputError(f"{out_dir}: output exists and is not a folder")
