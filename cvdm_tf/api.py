"""The Python API: a trained model applied to numpy arrays, with the results in physical units.

    >>> import cvdm_tf
    >>> model = cvdm_tf.load("builtin:qpi")            # or the run folder of `cvdm-tf train`
    >>> out = model.predict(pair, wavelength_um=0.55, pixel_size_um=0.16, defocus_um=1.5)
    >>> out.mean, out.std, out.schedule                  # [H, W] float32; QPI: phase and its std in rad
    >>> out.unit, out.pixel_size_um                      # "rad", 0.16

`predict` reads the array exactly as `cvdm-tf infer` reads a file (`read_array`: a QPI pair [2, H, W] or
[H, W, 2], a z-stack [Z, H, W] with `z_step_um`, a BioSR widefield image, an 8-bit RGB image for 4x SR) and
samples with the run's sampler unless told otherwise, so the numbers of a model's card hold from Python too.
The napari widget reconstructs its layers through `Model.predict`.

    measurement   the raw array a microscope or camera gives (intensities, counts), any size
    K (samples)   samples drawn per pixel: `mean` and `std` are over these
    T (steps)     sampling steps of the reverse diffusion
    physics       the task's physical parameters (`task.physics_keys`; QPI: wavelength_um, pixel_size_um,
                  defocus_um), None keeping the run's; refused outside the range the model was trained on
"""

from __future__ import annotations

import dataclasses
import inspect
import tempfile
from pathlib import Path

import numpy as np

from cvdm_tf.errors import InputError


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One reconstruction in the task's units (QPI: radians; BioSR / SR: the input's intensity units).

    Attributes:
        mean: float32 [H, W] (or [H, W, C] for C > 1 target channels): the mean of the K samples.
        std: float32, same shape: their standard deviation (ddof 1), the uncertainty map.
        schedule: float32, same shape: the learned schedule's magnitude tau * rho(1) (where the model finds it hard).
        samples: float32 [K, ...] or None: every sample, when `predict(..., keep_samples=True)`.
        median: float32 like mean, or None: the per-pixel median of the K samples (the estimate of least expected
            absolute error), when `predict(..., median=True)` or it is the run's estimate.
        mean_network: float32 like mean, or None: the mean network's estimate (no samples; E[x | y], or the median
            with `model.mean_loss = "l1"`), when
            `predict(..., mean_network=True)` on a model that has one, or it is the run's estimate.
        estimate: str. The run's point estimate (`sampler.estimate`, chosen on validation images): "mean",
            "median" or "mean_network"; `point_estimate` is that array.
        std_recalibrated: float32 like std, or None: the std map recalibrated on validation images (a factor
            per level of the image, `cvdm_tf.recalibration`), where the run has a fit of `cvdm-tf calibrate` for
            this K, T and sampler.
        unit: str. The unit of mean, std and samples ("" for relative intensities).
        pixel_size_um: float or None. The outputs' pixel size (the task's output grid), when known.
    """

    mean: np.ndarray
    std: np.ndarray
    schedule: np.ndarray
    samples: np.ndarray | None
    unit: str
    pixel_size_um: float | None
    median: np.ndarray | None = None
    mean_network: np.ndarray | None = None
    estimate: str = "mean"
    std_recalibrated: np.ndarray | None = None

    @property
    def point_estimate(self) -> np.ndarray:
        """The run's point estimate of x given y (`estimate`): the array to use as "the" reconstruction."""
        return getattr(self, self.estimate)


class Model:
    """A trained CVDM (a run folder or `builtin:NAME`), its task and its sampler, loaded once for many images.

    Attributes:
        config: the run's `Config` (its `sampler` table holds the default K, T and method).
        task: the run's task (`cvdm_tf.tasks`): what a measurement is, its units and physics.
        card: dict or None. The built-in model's card (`cvdm-tf models NAME`), None for a run folder.
        recalibrations: the run's fits of `cvdm-tf calibrate` (`cvdm_tf.recalibration`), one per sampler setting.
    """

    def __init__(self, spec, precision: str | None = None, data=None):
        """`spec`: a run folder or `builtin:NAME`; `precision`: the sampler's ("auto", "float32", "bfloat16"; None:
        the run's); `data`: a data config for the run's task other than the run's (e.g. QPI's refinement off)."""
        from cvdm_tf import builtin, recalibration
        from cvdm_tf.runs import load_run
        from cvdm_tf.sampler import sampler_for

        self.spec = str(spec)
        self.config, self.task, self.network = load_run(spec)
        if data is not None and data != self.config.data:
            from cvdm_tf.tasks import make_task

            self.task = make_task(self.config.task, data)
        sampler_config = dataclasses.replace(self.config.sampler, precision=precision or self.config.sampler.precision)
        self.sampler = sampler_for(self.network, sampler_config)  # one compiled graph for every call
        self.card = builtin.card(spec) if builtin.is_builtin(spec) else None
        self.recalibrations = recalibration.of_run(spec)

    def recalibration(self, samples: int | None = None, steps: int | None = None, method: str | None = None):
        """The fit of `cvdm-tf calibrate` for this sampler setting (None: the run's), or None."""
        from cvdm_tf.recalibration import find

        return find(self.recalibrations, self.config.sampler, samples, steps, method)

    def __repr__(self):
        return f"cvdm_tf.Model({self.spec!r}, task={self.task.name!r})"

    def predict(self, measurement, samples: int | None = None, steps: int | None = None,
                method: str | None = None, seed: int = 0, tile: int = 256, batch_size: int = 4,
                z_step_um: float | None = None, plane: int = 0, keep_samples: bool = False, message=None,
                progress=None, chunk: int | None = None, step_progress=None, name: str = "measurement",
                median: bool = False, mean_network: bool = False, **physics) -> Prediction:
        """Reconstruct one measurement.

        Args:
            measurement: array-like, a raw measurement as `read_array` takes it.
            samples, steps, method: K, T and "ddpm" / "ddim"; None: the run's sampler (its card's).
            seed: int. Same seed, same measurement, same result.
            tile, batch_size: as `cvdm-tf infer --tile --batch-size`.
            z_step_um, plane: a QPI z-stack's plane spacing; which image of a stack of single images.
            keep_samples: bool. Also return every sample (K times the memory of `mean`).
            message: callable(str) or None. The reader's notes (e.g. which planes of a z-stack were paired).
            progress: callable(done, total) or None, after each batch of tiles (it may raise to stop).
            chunk, step_progress: sample in compiled runs of `chunk` steps with `step_progress(done, steps)`
                between them (it may raise to stop: a GUI cancels within `chunk` steps); the same samples.
            name: str. What the measurement is called in messages (e.g. a napari layer's name).
            median: bool. Also return the per-pixel median of the K samples.
            mean_network: bool. Also return the mean network's estimate (models with a mean network).
            **physics: the task's physics in its units (QPI: wavelength_um=, pixel_size_um=, defocus_um=).

        Returns:
            Prediction.

        Raises:
            InputError: the array is not a measurement of this task, an option is out of range, or the physics
                lies outside the model's training range (the message names the range).
        """
        task, raw = read_array(self.task, measurement, z_step_um=z_step_um, plane=plane, message=message,
                               name=name, physics=physics)
        result = self.reconstruct(task, raw, samples=samples, steps=steps, method=method, seed=seed, tile=tile,
                                  batch_size=batch_size, keep_samples=keep_samples, progress=progress, chunk=chunk,
                                  step_progress=step_progress, median=median, mean_network=mean_network)
        squeeze = (lambda a: a[..., 0]) if result["mean"].shape[-1] == 1 else (lambda a: a)  # noqa: E731
        return Prediction(mean=squeeze(result["mean"]), std=squeeze(result["std"]),
                          schedule=squeeze(result["schedule"]),
                          samples=squeeze(result["samples"]) if keep_samples else None,
                          unit=task.target_unit, pixel_size_um=task.output_pixel_size_um,
                          median=squeeze(result["median"]) if "median" in result else None,
                          mean_network=squeeze(result["mean_network"]) if "mean_network" in result else None,
                          estimate=self.config.sampler.estimate,
                          std_recalibrated=squeeze(result["std_recalibrated"]) if "std_recalibrated" in result
                          else None)

    def reconstruct(self, task, raw, samples: int | None = None, steps: int | None = None, method: str | None = None,
                    seed: int = 0, **options) -> dict:
        """`inference.reconstruct` of one raw measurement [h, w, C] already read by `task` (e.g. `task.read_file`,
        as `cvdm-tf infer` reads files), with this model's sampler and the run's K, T and method by default: dict
        of mean, std, schedule [H, W, C] in physical units (and samples with `keep_samples=True`), and the run's
        point estimate (`sampler.estimate`: median or mean_network) whatever `options` ask; `std_recalibrated`
        too where the run has a fit of `cvdm-tf calibrate` for this setting (`recalibration`). `options`: tile,
        batch_size, keep_samples, median, mean_network, progress, chunk, step_progress."""
        from cvdm_tf.inference import reconstruct

        samples = samples or self.config.sampler.samples
        steps = steps or self.config.sampler.steps
        method = method or self.config.sampler.method
        result = reconstruct(self.network, task, raw, samples=samples, steps=steps, method=method, seed=seed,
                             sampler=self.sampler, estimate=self.config.sampler.estimate, **options)
        fit = self.recalibration(samples, steps, method)
        if fit is not None:
            result["std_recalibrated"] = fit.apply(result["std"], result["mean"])
        return result


def load(spec) -> Model:
    """The model of a run folder of `cvdm-tf train` or of a built-in model `builtin:NAME` (`cvdm-tf models`)."""
    return Model(spec)


def read_array(task, data, z_step_um: float | None = None, plane: int = 0, message=None,
               name: str = "array", physics: dict | None = None):
    """(task, raw measurement [h, w, C_m]) of an array, read as `cvdm-tf infer` reads a file.

    The array is written to a temporary TIFF (dtype kept, so integer images scale as files do) and read back with
    `task.read_file`, so every rule of the command line holds: a QPI pair as [2, H, W] or [H, W, 2], a
    through-focus z-stack [Z, H, W] with a z step (its pair picked around the focus plane), alpha channels
    dropped, NaN/Inf refused.

    Args:
        task: the run's task (its `read_file` decides the layout and values).
        data: array-like. [H, W], [H, W, C], [C, H, W] or a stack [N, H, W].
        z_step_um: float or None. A QPI through-focus z-stack's plane spacing (None: not a z-stack).
        plane: int. Which image of a stack of N single images.
        message: callable(str) or None. The reader's notes (e.g. which planes of a z-stack were used).
        name: str. What the array is called in messages (a napari layer's name).
        physics: dict or None. The measurement's physics (`task.physics_keys`, None where not given).

    Returns:
        (task for the measurement's physics, checked against the model's range; np.ndarray float32 [h, w, C_m]).

    Raises:
        InputError: the array is not an image the task reads, has the wrong channel count, or physics outside
            the model's range.
    """
    import tifffile

    array = np.asarray(data)
    if array.dtype.kind not in "uif" or array.ndim not in (2, 3):
        raise InputError(f"{name}: expected a 2-D image or a 3-D stack of numbers, got {array.ndim}-D {array.dtype}")
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
    options = {}
    if z_step_um:
        if "z_step_um" not in inspect.signature(task.read_file).parameters:
            raise InputError(f"{name}: this model's task reads no z-stacks (set the z step to 0)")
        options["z_step_um"] = float(z_step_um)
    with tempfile.TemporaryDirectory(prefix="cvdm-array-") as folder:
        path = Path(folder) / "array.tif"
        tifffile.imwrite(path, array, photometric="rgb" if _is_rgb(array) else "minisblack")
        # Messages name the array, not the temporary file.
        rename = lambda text: str(text).replace(str(path), name)  # noqa: E731
        try:
            task, images = task.read_file(path, message=message and (lambda text: message(rename(text))),
                                          physics=physics, **options)
        except InputError as err:
            raise InputError(rename(err)) from None
    try:
        task.check_physics()
    except InputError as err:
        raise InputError(f"{name}: {err}") from None
    image = images[min(max(int(plane), 0), len(images) - 1)]
    if image.shape[-1] != task.measurement_channels:
        stack = len(images) > 1 and "z_step_um" in inspect.signature(task.read_file).parameters
        raise InputError(f"{name}: has {image.shape[-1]} channel(s), the model needs {task.measurement_channels} "
                         f"({task.describe_measurement()})" + ("; a z-stack needs its z step" if stack else ""))
    return task, image


def _is_rgb(array: np.ndarray) -> bool:
    return array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8
