"""napari layers <-> the task's arrays: what the widget samples from, and the layers it adds back (no Qt here).

A layer's array becomes the task's raw measurement [h, w, C_m] by the very reader `cvdm-tf infer` uses: it is
written to a temporary TIFF (dtype kept, so integer images scale as files do) and read back with
`task.read_file`. So every rule of the command line holds in the viewer too: a QPI pair as [2, H, W]
or [H, W, 2], a through-focus z-stack [Z, H, W] with a z step (its pair picked around the focus plane), alpha
channels dropped, NaN/Inf refused.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path

import numpy as np

from cvdm_tf.errors import InputError

#: The outputs of one reconstruction, as `cvdm_tf.inference.reconstruct` returns them, in the order they are added.
OUTPUTS = ("mean", "std", "schedule")
COLORMAPS = {"mean": "gray", "std": "magma", "schedule": "viridis"}


def measurement(task, data, z_step_um: float | None = None, plane: int = 0, message=None,
                name: str = "layer", physics: dict | None = None):
    """(task, raw measurement [h, w, C_m]) of a layer's array, read as `cvdm-tf infer` reads a file.

    Args:
        task: the run's task (its `read_file` decides the layout and values).
        data: array-like. The layer's data: [H, W], [H, W, C], [C, H, W] or a stack [N, H, W].
        z_step_um: float or None. A QPI through-focus z-stack's plane spacing (None: not a z-stack).
        plane: int. Which image of a stack of N single images (the viewer's current plane).
        message: callable(str) or None. The reader's notes (e.g. which planes of a z-stack were used).
        name: str. The layer's name, for messages.
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
    with tempfile.TemporaryDirectory(prefix="cvdm-napari-") as folder:
        path = Path(folder) / "layer.tif"
        tifffile.imwrite(path, array, photometric="rgb" if _is_rgb(array) else "minisblack")
        # Messages name the layer, not the temporary file.
        rename = lambda text: str(text).replace(str(path), name)  # noqa: E731
        try:
            task, images = task.read_file(path, message=message and (lambda text: message(rename(text))),
                                          physics={key: value for key, value in (physics or {}).items()
                                                   if key in task.physics_keys}, **options)
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


def output_layers(result: dict, task, name: str, pixel_size_um: float | None = None) -> list[tuple]:
    """napari LayerData tuples (data, kwargs, "image") of a reconstruction: mean, std and schedule.

    Args:
        result: dict of float32 [H, W, C] (`reconstruct`'s output).
        task: the run's task: the value unit (QPI: radians) and, when known, the output pixel size.
        name: str. The input layer's name; layers are called NAME_mean, NAME_std, NAME_schedule.
        pixel_size_um: float or None. The output pixel size when the task does not know it (None: unscaled).

    Returns:
        list of (np.ndarray, dict, str), in `OUTPUTS` order.
    """
    pixel = task.output_pixel_size_um or pixel_size_um
    unit = getattr(task, "target_unit", "") or ""
    layers = []
    for key in OUTPUTS:
        value_unit = "" if key == "schedule" else unit  # tau * rho(1) is unitless
        layers.append(layer_data(result[key], f"{name}_{key}", key, pixel, value_unit))
    return layers


def layer_data(array: np.ndarray, name: str, kind: str, pixel_size_um: float | None, value_unit: str = "") -> tuple:
    """One output as a LayerData tuple; [H, W, 1] is shown as [H, W], three channels as RGB, others per channel."""
    data = np.asarray(array, dtype=np.float32)
    kwargs = {"name": name, "colormap": COLORMAPS.get(kind, "gray"),
              "metadata": {"cvdm_tf": kind, "unit": value_unit, "pixel_size_um": pixel_size_um}}
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.shape[-1] == 3 and kind == "mean":
        kwargs.pop("colormap")
        kwargs["rgb"] = True
        data = np.clip(data, 0.0, 1.0)  # napari shows float RGB in [0, 1]
    elif data.ndim == 3:
        kwargs["channel_axis"] = -1
        kwargs["name"] = [f"{name}_{c}" for c in range(data.shape[-1])]
        kwargs.pop("colormap")
    if pixel_size_um:
        kwargs["scale"] = (pixel_size_um, pixel_size_um)
        kwargs["units"] = ("um", "um")
    finite = data[np.isfinite(data)]
    if finite.size and "rgb" not in kwargs and "channel_axis" not in kwargs:
        low, high = float(finite.min()), float(finite.max())
        kwargs["contrast_limits"] = (low, high if high > low else low + 1.0)
    return data, kwargs, "image"
