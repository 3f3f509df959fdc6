"""napari sample data (File > Open Sample > cvdm-tf): one held-out measurement per built-in model, made as the
model's card check makes it (`builtin.check_task`, `Task.eval_cases` on the shipped held-out set), at its pixel
size. Each layer names its model in `metadata["cvdm_tf_model"]`, which the Reconstruct widget picks up."""

from __future__ import annotations

import numpy as np


def _layer(name: str, title: str, channels_first: bool = False, rgb: bool = False) -> list[tuple]:
    from cvdm_tf import builtin

    task, raw = builtin.sample_measurement(builtin.PREFIX + name)
    pixel = task.measurement_pixel_size_um
    data = np.moveaxis(raw, -1, 0) if channels_first else raw[..., 0] if raw.shape[-1] == 1 else raw
    kwargs = {"name": title, "metadata": {"cvdm_tf_model": f"builtin:{name}"}}
    if rgb:
        kwargs["rgb"] = True
    if pixel:
        # A pair [2, H, W] is two images, not a z-stack: its first axis keeps scale 1.
        kwargs["scale"] = ((1.0,) if channels_first else ()) + (pixel, pixel)
        kwargs["units"] = (("pixel",) if channels_first else ()) + ("um", "um")
    return [(data, kwargs, "image")]


def qpi_pair() -> list[tuple]:
    """A defocused intensity pair I(-dz), I(+dz) [2, H, W] of a held-out cell field (the default microscope)."""
    return _layer("qpi", "qpi_pair", channels_first=True)


def biosr_widefield() -> list[tuple]:
    """A held-out widefield image of simulated fluorescent cells (62.6 nm pixels)."""
    return _layer("biosr", "biosr_widefield")


def sr4x_low_resolution() -> list[tuple]:
    """A held-out low-resolution colour image (the 4x-downsampled tile of a photograph)."""
    return _layer("sr4x", "sr4x_low_resolution", rgb=True)
