"""napari reader for what `cvdm-tf infer` writes: NAME_mean.tif (and NAME_median.tif, NAME_mean_network.tif),
NAME_std.tif and NAME_schedule.tif as image layers, with the pixel size `cvdm_tf.io.write_tiff` stored in the TIFF
(so they overlay in micrometres)."""

from __future__ import annotations

import os
from pathlib import Path

from cvdm_tf.config import ESTIMATES
from cvdm_tf.napari.layers import layer_data

#: The infer outputs this reader opens: the point estimates, std (raw and recalibrated) and schedule.
KINDS = (*ESTIMATES, "std", "std_recalibrated", "schedule")
#: File name endings this reader claims (also in napari.yaml's filename_patterns).
SUFFIXES = tuple(f"_{key}.{ext}" for key in KINDS for ext in ("tif", "tiff"))


def get_reader(path):
    """npe2 reader contribution: `read_outputs` for infer outputs (a file or a list of files), else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(output_kind(p) for p in paths):
        return None
    return read_outputs


def output_kind(path) -> str | None:
    """The kind ("mean", "median", "mean_network", "std", "std_recalibrated" or "schedule") of a file named like an
    infer output, else None."""
    name = Path(path).name.lower()
    for key in KINDS:
        if name.endswith((f"_{key}.tif", f"_{key}.tiff")):
            return key
    return None


def read_outputs(path) -> list[tuple]:
    """LayerData tuples (data, kwargs, "image") of infer outputs, named after the files, scaled in um."""
    import tifffile

    from cvdm_tf import io

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out = []
    for file in paths:
        array = tifffile.imread(file)
        out.append(layer_data(array, Path(file).stem, output_kind(file), io.tiff_pixel_size_um(file)))
    return out
