"""napari layers <-> the task's arrays: the layers the widget adds back (no Qt here).

A layer's array becomes the task's raw measurement by `cvdm_tf.api.read_array`, the very reader `cvdm-tf infer`
uses, so every rule of the command line holds in the viewer too.
"""

from __future__ import annotations

import numpy as np

from cvdm_tf.config import ESTIMATES

#: The outputs of one reconstruction, as `cvdm_tf.inference.reconstruct` returns them, in the order they are added
#: (the run's point estimate after the mean, where it is another).
OUTPUTS = ("mean", "std", "schedule")
COLORMAPS = {"std": "magma", "std_recalibrated": "magma", "schedule": "viridis"}


def output_layers(prediction, name: str, pixel_size_um: float | None = None) -> list[tuple]:
    """napari LayerData tuples (data, kwargs, "image") of a reconstruction: mean, the run's point estimate where
    it is another (median or mean_network), std, the recalibrated std where the run has one for the setting, and
    schedule.

    Args:
        prediction: `cvdm_tf.api.Prediction` (mean, std, schedule [H, W] or [H, W, C]; its unit, e.g. radians).
        name: str. The input layer's name; layers are called NAME_mean, (NAME_median,) NAME_std, NAME_schedule.
        pixel_size_um: float or None. The output pixel size (None: unscaled).

    Returns:
        list of (np.ndarray, dict, str), in `OUTPUTS` order with the estimate after the mean.
    """
    layers = []
    estimate = getattr(prediction, "estimate", "mean")
    recalibrated = ("std_recalibrated",) if getattr(prediction, "std_recalibrated", None) is not None else ()
    for key in OUTPUTS[:1] + ((estimate,) if estimate != "mean" else ()) + OUTPUTS[1:2] + recalibrated + OUTPUTS[2:]:
        value_unit = "" if key == "schedule" else prediction.unit  # tau * rho(1) is unitless
        layers.append(layer_data(getattr(prediction, key), f"{name}_{key}", key, pixel_size_um, value_unit))
    return layers


def layer_data(array: np.ndarray, name: str, kind: str, pixel_size_um: float | None, value_unit: str = "") -> tuple:
    """One output as a LayerData tuple; [H, W, 1] is shown as [H, W], three channels as RGB, others per channel."""
    data = np.asarray(array, dtype=np.float32)
    kwargs = {"name": name, "colormap": COLORMAPS.get(kind, "gray"),
              "metadata": {"cvdm_tf": kind, "unit": value_unit, "pixel_size_um": pixel_size_um}}
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.shape[-1] == 3 and kind in ESTIMATES:
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
