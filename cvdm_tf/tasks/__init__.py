"""The inverse problems, one module each, registered by name.

    qpi     quantitative phase imaging from a defocused intensity pair      (cvdm_tf.tasks.qpi)
    biosr   super-resolution microscopy, widefield -> SIM-like, 2x grid     (cvdm_tf.tasks.biosr)
    sr4x    4x super-resolution of natural images, colour or grey            (cvdm_tf.tasks.sr4x)

`get_task(name)` gives the task class (`Task` subclass, see `base.py` for the contract); `make_task(name, data)`
an instance for a `[data]` config table. Task modules (TensorFlow) are imported on first use; what the command
line needs to show `--help` (each task's options) is registered here, so `cvdm-tf --help` stays instant.
"""

from __future__ import annotations

import importlib

from cvdm_tf.errors import InputError
from cvdm_tf.tasks.base import Option

#: name -> module that defines it (the module's task class has `name == key`).
TASK_MODULES = {"qpi": "cvdm_tf.tasks.qpi", "biosr": "cvdm_tf.tasks.biosr", "sr4x": "cvdm_tf.tasks.sr4x"}
TASK_NAMES = tuple(TASK_MODULES)

#: name -> the options the task adds to `cvdm-tf simulate` / `eval` (its `Task.options`).
TASK_OPTIONS = {
    "qpi": (
        Option("--wavelength", "wavelength_um", float, "Wavelength of the illumination, micrometres (default: the "
               "run's data.wavelength_um).", commands=("simulate", "eval", "infer"), physics=True),
        Option("--pixel-size", "pixel_size_um", float, "Pixel size at the sample, micrometres (default: the file's "
               "OME / ImageJ metadata, else the run's).", commands=("simulate", "eval", "infer"), physics=True),
        Option("--defocus", "defocus_um", float, "Defocus dz of the pair I(-dz), I(+dz), micrometres; of a z-stack, "
               "the planes nearest to +-dz are paired (default: the run's).", commands=("simulate", "eval", "infer"),
               physics=True),
        Option("--phase-max", "phase_max", float, "Phase of an integer image's maximum (radians)."),
        Option("--absorption", "absorption", float, "Absorbing objects: amplitude 1 - absorption * phase / "
               "phase_max (default 0: pure phase).", commands=("simulate", "eval")),
        Option("--boundary", "boundary", str, "What the measurement is: camera (a frame of a wider field, any real "
               "acquisition) or periodic (a field that repeats, as a periodic simulation); picks the TIE channel's "
               "solver and the data-consistency step (default: the run's data.boundary).",
               commands=("infer", "eval")),
        Option("--camera-crop", "camera_crop", int, "Simulate each image whole and keep its central N x N px (and "
               "truth), a camera frame of a wider field (default 0: the whole, periodic image).",
               commands=("simulate", "eval")),
        Option("--tie-regularization", "regularization", float, "TIE's Tikhonov weight (default: tuned on the "
               "evaluated images, the best TIE can do).", commands=("eval",), baseline="tie"),
        Option("--z-step", "z_step_um", float, "A through-focus z-stack: its plane spacing in micrometres "
               "(default: from the TIFF's metadata); the pair is read at +-defocus around focus.",
               commands=("infer", "eval"), reader=True),
        Option("--focus-plane", "focus", int, "In-focus plane of a z-stack (default: minimum contrast, right "
               "for weakly absorbing samples).", commands=("infer", "eval"), reader=True),
        Option("--data-consistency", "data_consistency", int, "Steps making each sample reproduce its "
               "intensity pair after sampling (default: the run's data.data_consistency; 0 = off).",
               commands=("infer", "eval")),
    ),
    "biosr": (
        Option("--na", "na", float, "Numerical aperture of the objective."),
        Option("--wavelength", "wavelength_um", float, "Emission wavelength in micrometres."),
        Option("--pixel-size", "pixel_size_um", float, "Pixel size of the SIM (output) grid in micrometres."),
        Option("--photons", "photons", float, "Expected photons at the brightest widefield pixel (noise)."),
        Option("--rl-iterations", "iterations", int, "Richardson-Lucy iterations (default: tuned on the truth).",
               commands=("eval",), baseline="richardson-lucy"),
    ),
    "sr4x": (
        Option("--resampling", "resampling", str, "Kernel of the 4x down- and up-sampling: bicubic or lanczos "
               "(default: the run's data.resampling)."),
    ),
}


def get_task(name: str):
    """The task class registered as `name`."""
    if name not in TASK_MODULES:
        raise InputError(f"unknown task {name!r} (known: {', '.join(TASK_NAMES)})")
    module = importlib.import_module(TASK_MODULES[name])
    return next(value for value in vars(module).values()
                if isinstance(value, type) and getattr(value, "name", None) == name and hasattr(value, "pair"))


def data_config_class(name: str):
    """The `[data]` dataclass of a task."""
    return get_task(name).DataConfig


def make_task(name: str, data_config=None):
    """A task instance for `data_config` (default: the task's default data config)."""
    cls = get_task(name)
    return cls(data_config if data_config is not None else cls.DataConfig())
