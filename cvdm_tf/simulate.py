"""`cvdm-tf simulate`: ground truth -> the measurement a microscope would record, as TIFF files.

For QPI, each input image NAME becomes
    NAME.tif        float32 [H, W, 2]: the raw intensities (I(-dz), I(+dz)), not normalised
    NAME_phase.tif  float32 [H, W]: the phase in radians
A float image (TIFF or .npy) is taken as phase in radians as it is; an integer image is scaled from its dtype's
range to [0, phase_max]. Colour images are converted to grayscale first.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from cvdm_tf import io
from cvdm_tf.config import DataConfig
from cvdm_tf.data import sources
from cvdm_tf.data.tasks import make_task


def phase_from_image(image: np.ndarray, source_dtype, phase_max: float) -> np.ndarray:
    """[H, W] radians from a read image: float as it is, integer scaled to [0, phase_max]."""
    gray = sources.to_grayscale(image)[..., 0]
    if np.issubdtype(np.dtype(source_dtype), np.floating):
        return gray.astype(np.float32)
    return (sources.to_unit_range(gray, source_dtype) * phase_max).astype(np.float32)


def simulate_folder(task_name: str, input_path, out_dir, noise: str = "none", defocus_um: float = 1.0,
                    wavelength_um: float = 0.521, pixel_size_um: float = 0.21, phase_max: float = 3.5,
                    seed: int = 0) -> int:
    """Simulate every image in `input_path` (file or folder) into `out_dir`; returns the number written."""
    data = dataclasses.replace(DataConfig(), noise=noise, defocus_um=defocus_um, wavelength_um=wavelength_um,
                               pixel_size_um=pixel_size_um, phase_max=phase_max)
    task = make_task(task_name, data)
    # Read (and so validate) everything before writing anything: a bad file leaves no partial output.
    items = sources.iter_source_images(input_path, with_dtype=True)
    out_dir = Path(out_dir)
    for index, (name, image, dtype) in enumerate(items):
        phase = phase_from_image(image, dtype, phase_max)
        intensities = task.add_noise(task.measure(tf.constant(phase)), tf.constant([seed, index], tf.int64))
        io.write_tiff(out_dir / f"{name}.tif", intensities.numpy().astype(np.float32))
        io.write_tiff(out_dir / f"{name}_phase.tif", phase)
    return len(items)
