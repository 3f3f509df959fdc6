"""The contract every inverse problem fulfils, so that generic code (model, sampler, training loop, run folder,
inference, tiling, export, eval, CLI) never needs to know which problem it runs.

A task turns the world into the network's units and back:

    raw measurement m  [h, w, C_m]       what a microscope records (QPI: an intensity pair; BioSR: widefield)
      -> condition y   [H, W, C_y]       `condition(m)`: normalised, on the OUTPUT grid (H = scale * h), plus any
                                         estimate the task offers (QPI: the TIE phase) in its LAST channels
    target x           [H, W, C_x]       the network's units; physical value = x * scale + offset, with
      <- (offset, scale)                 `units(m)` computed from the measurement alone (QPI: fixed; BioSR: the
                                         widefield's percentiles, so results come back in the input's units)

Training pairs come from a `Bank` of whole examples (`training_banks`): crops of it become (y, x) pairs inside
`tf.data` through `pair(crop, seed)`. A crop is a dict of arrays [size / divisor, size / divisor, C] whose
divisors the task states in `crop_divisors` (1: the output grid; 2: a widefield image on the half grid).

For `eval`, a task lists `Case`s (a name, a raw measurement, the truth in physical units), names its classical
baselines and scores an estimate against the truth with its own metrics (MAE, PSNR, SSIM, MS-SSIM for every
task, plus e.g. resolution for microscopy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cvdm_tf.errors import InputError


@dataclass(frozen=True)
class Option:
    """A command-line option of a task for some of `cvdm-tf simulate` / `infer` / `eval`. `--flag VALUE` sets the
    data config's `key`; with `baseline` set, the keyword `key` of that baseline; with `reader`, the keyword
    `key` of the task's `read_file` / `eval_cases` (how a file becomes measurements); with `physics`, the
    physical parameter `key` of the measurement (`Task.physics_keys`: checked against the model's range)."""

    flag: str
    key: str
    type: type
    help: str
    commands: tuple = ("simulate", "eval")
    baseline: str = ""
    reader: bool = False
    physics: bool = False


@dataclass
class Case:
    """One evaluation case: a raw measurement and the truth it came from (physical units, output grid)."""

    name: str
    measurement: np.ndarray  # [h, w, C_m]
    truth: np.ndarray  # [H, W] (or [H, W, C])
    group: str = ""  # e.g. the structure of a BioSR cell, for per-group tables


class Baseline:
    """A classical method for `eval`: `tune` once on all cases (an oracle may look at the truth), then `__call__`
    on each measurement, giving an estimate in the truth's units."""

    name = ""
    description = ""

    def tune(self, cases: list[Case]) -> dict:
        """Choose parameters; returns what was chosen (written to the report)."""
        return {}

    def __call__(self, measurement: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Task:
    """Base class of the inverse problems. Subclasses set the class attributes and implement the methods.

    Args:
        data: the task's `DataConfig` (its own frozen dataclass, the `[data]` table of the config).
    """

    #: Registry name (`cvdm-tf train --task NAME`).
    name = ""
    #: One line for `--help`.
    description = ""
    #: The frozen dataclass of the `[data]` table.
    DataConfig: type = object
    #: Output grid / input grid (QPI 1, BioSR 2).
    scale = 1
    #: Unit of the target in physical units (TIFF metadata, preview labels).
    target_unit = ""
    #: What the target is called (channel names of exported packages).
    target_name = "image"
    #: bioimage.io tags of the task's exported packages.
    package_tags: tuple = ()
    #: Outputs known only up to a per-tile constant (QPI's phase), reconciled across tiles by inference.
    offset_free_outputs: tuple = ()
    #: Noise models `eval` and `simulate` accept.
    noise_models: tuple = ("none",)
    #: Options of `cvdm-tf simulate` and `eval` that set data keys.
    options: tuple = ()
    #: File suffixes `infer` picks up in an input folder.
    input_suffixes: tuple = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz")
    #: Divisor of each array in a training crop (see the module docstring).
    crop_divisors: dict = {"truth": 1}

    def __init__(self, data):
        self.data = data

    # --- channels ---
    @property
    def measurement_channels(self) -> int:
        raise NotImplementedError

    @property
    def condition_channels(self) -> int:
        raise NotImplementedError

    @property
    def target_channels(self) -> int:
        return 1

    @property
    def measurement_names(self) -> list[str]:
        """A name per measurement channel (the channel axis of exported packages)."""
        return [f"channel{i}" for i in range(self.measurement_channels)]

    @property
    def target_names(self) -> list[str]:
        """A name per target channel."""
        channels = self.target_channels
        return [self.target_name] if channels == 1 else [f"{self.target_name}{i}" for i in range(channels)]

    @property
    def condition_has_estimate(self) -> bool:
        """Whether the last `target_channels` condition channels hold an estimate of the target (in target
        units), so that `model.mean = "condition"` can diffuse the residual around it."""
        return False

    #: How to make the condition hold an estimate of the target (for the error message when it does not).
    estimate_option = "this task offers no estimate: use model.mean = \"none\" or \"network\""

    @property
    def output_pixel_size_um(self) -> float | None:
        """Pixel size of the outputs (written into the TIFFs), or None when unknown."""
        return None

    @property
    def measurement_pixel_size_um(self) -> float | None:
        """Pixel size of the measurement (the output grid's times `scale`), or None when unknown."""
        return self.output_pixel_size_um * self.scale if self.output_pixel_size_um else None

    def describe_measurement(self) -> str:
        """What `infer --input` expects, for error messages."""
        return f"{self.measurement_channels}-channel images"

    # --- training data ---
    def training_banks(self, validation_fraction: float, seed: int, min_size: int, warn: Callable | None = None):
        """(train Bank, validation Bank or None, a short description) of the configured source."""
        raise NotImplementedError

    def field_size(self, size: int) -> int:
        """Side (output grid) of the bank crop a training pair of `size` px is made from: `size`, or more for a
        task that simulates a wider field and crops it (QPI's camera frames)."""
        return size

    def pair(self, crop: dict, seed):
        """One training pair (y [H, W, C_y], x [H, W, C_x]) from a crop (TensorFlow, inside tf.data)."""
        raise NotImplementedError

    # --- units (pure TensorFlow: traced into the exported SavedModel) ---
    def condition(self, measurement):
        """Raw measurement [..., h, w, C_m] -> network condition y [..., H, W, C_y]. Whole images only: tiles
        must share the normalisation of the image."""
        raise NotImplementedError

    def units(self, measurement):
        """(offset, scale), each shaped [..., 1, 1, 1] (the measurement's leading axes): physical = x * scale +
        offset."""
        raise NotImplementedError

    # --- the measurement's physics ---
    #: Data keys that describe how one measurement was made (QPI: wavelength, pixel size, defocus in um), given
    #: per measurement by `infer` / `eval` flags, a file's metadata, the SavedModel's inputs.
    physics_keys: tuple = ()

    def with_physics(self, **values):
        """This task for a measurement with the given physics (None keeps a value); not range-checked."""
        unknown = sorted(key for key, value in values.items() if value is not None and key not in self.physics_keys)
        if unknown:
            raise InputError(f"{', '.join(unknown)}: not a physical parameter of task {self.name}")
        return self

    def with_physics_tensors(self, **values):
        """This task with its physics as scalar tensors (the SavedModel's inputs, `physics_keys` order)."""
        return self

    def check_physics(self):
        """An InputError when the measurement's physics lies outside what the model was trained on."""

    def read_file(self, path, message: Callable | None = None, physics: dict | None = None, **options):
        """(task, measurements) of one input file: the task for the file's physics (`for_measurement`: `physics`
        as given by the user, None where not; else the pixel size the file's metadata states), and its raw
        measurements."""
        task = self.for_measurement(physics, stated_pixel_size_um(path), path, message)
        return task, task.read_measurements(path, message=message, **options)

    def for_measurement(self, physics: dict | None = None, stated_pixel_size_um: float | None = None, source=None,
                        message: Callable | None = None) -> "Task":
        """This task for one measurement: the physics the user gave (`physics`, None values ignored) win; else a
        pixel size the measurement's metadata states (`with_stated_pixel_size`); else the run's. Not
        range-checked (`check_physics`)."""
        given = {key: value for key, value in (physics or {}).items() if value is not None}
        task = self
        if stated_pixel_size_um is not None and "pixel_size_um" not in given:
            task = self.with_stated_pixel_size(stated_pixel_size_um, source)
            trained = self.measurement_pixel_size_um
            if message and trained and not np.isclose(stated_pixel_size_um, trained, rtol=1e-3):
                hint = " (--pixel-size overrides it)" if "pixel_size_um" in self.physics_keys else ""
                message(f"{source}: pixel size {stated_pixel_size_um:g} um, from its metadata{hint}")
        return task.with_physics(**given)

    # --- after sampling ---
    @property
    def refines(self) -> bool:
        """Whether `refine` changes samples (then `inference.reconstruct` keeps every sample to pass it)."""
        return False

    def refine(self, samples, measurement):
        """Samples [..., K, H, W, C_x] in physical units, made to agree with their whole raw measurement
        [..., h, w, C_m] (QPI: data consistency through the physics); the identity unless the task says otherwise."""
        return samples

    # --- files ---
    def read_measurements(self, path, message: Callable | None = None, **options) -> list[np.ndarray]:
        """The raw measurement(s) [h, w, C_m] in one input file (a stack may hold several); `options` are the
        task's reader options (`Option.reader`), `message(text)` tells the user what was chosen."""
        from cvdm_tf.data import sources

        return sources.read_stack(path)

    def write_outputs(self, out_dir, name: str, raw: np.ndarray, result: dict, source=None,
                      made_by: str = "", estimate: str = "mean", mean_network_estimate: str = "E[x|y]") -> list:
        """The files `infer` writes for one image NAME (`result`: mean, std, schedule from `inference.reconstruct`;
        `source`: the file it was read from; `made_by`: the model and sampler, for the files' metadata; `estimate`:
        the run's point estimate, which the preview shows; `mean_network_estimate`: what the mean network
        estimates, `ModelConfig.mean_network_estimate`, for its file's channel name); returns their paths.
        Default: NAME_mean/std/schedule.tif (float32 OME-TIFF in the task's units and output pixel size, with the
        physics of the measurement), those of the other point estimates in `result`, and NAME_preview.png."""
        from cvdm_tf.inference import write_outputs

        description = "; ".join(part for part in (made_by, self.describe_physics()) if part)
        return write_outputs(out_dir, name, raw, result, unit=self.target_unit,
                             pixel_size_um=self.output_pixel_size_um, description=description, estimate=estimate,
                             mean_network_estimate=mean_network_estimate)

    def with_stated_pixel_size(self, pixel_size_um: float, source) -> "Task":
        """This task for a measurement whose metadata states its pixel size (um, on the measurement's grid):
        the outputs are labelled from it where the task has a pixel size (default: a task without one)."""
        return self

    def describe_physics(self) -> str:
        """The physics of the measurement, in words, for the outputs' metadata ("" where there is none to state)."""
        return ""

    def is_truth_file(self, path, stems: set) -> bool:
        """Whether a file in an `infer` input folder is a ground truth beside its measurement (not an input)."""
        return False

    def simulate_files(self, input_path, out_dir, noise: str, seed: int) -> int:
        """`cvdm-tf simulate`: write measurements (and their truth) made from the images in `input_path`."""
        raise NotImplementedError

    # --- evaluation ---
    def eval_cases(self, data_path, noise: str, seed: int, **options) -> list[Case]:
        """The cases in `data_path`; `options` are the task's reader options."""
        raise NotImplementedError

    def baselines(self) -> dict:
        """name -> Baseline factory (keyword arguments: the baseline's options)."""
        return {}

    def centre(self, estimate: np.ndarray, truth: np.ndarray):
        """(estimate, truth) as the task compares them (QPI: each without its mean, the phase's free constant)."""
        return np.asarray(estimate, np.float64), np.asarray(truth, np.float64)

    def centre_spread(self, std: np.ndarray, estimate: np.ndarray) -> np.ndarray:
        """A std map of `estimate` in the units `centre` gives its error (unchanged where `centre` only shifts)."""
        return np.asarray(std, np.float64)

    def score(self, estimate: np.ndarray, truth: np.ndarray) -> dict:
        """Metrics of one estimate against its truth (both physical units, [H, W])."""
        raise NotImplementedError

    #: Column of the report tables: (key, header, format).
    score_columns: tuple = ()


def stated_pixel_size_um(path) -> float | None:
    """The pixel size (um) a TIFF's metadata states (OME, ImageJ, TIFF resolution in a length unit; from the
    header alone), None for other files or none stated."""
    from pathlib import Path

    from cvdm_tf.data import stacks

    return stacks.pixel_size_um(path) if Path(path).suffix.lower() in (".tif", ".tiff") else None
