"""napari writer (File > Save Selected Layer(s) > *.tif): an image layer as a float32 OME-TIFF with its pixel size
in um when its scale is in micrometres (`cvdm_tf.io.write_tiff`, as `cvdm-tf infer` writes its outputs)."""

from __future__ import annotations

import numpy as np

MICROMETRES = ("um", "µm", "micrometer", "micrometre", "micron")


def write_image(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer: a 2-D image or an RGB image; returns the path written."""
    from cvdm_tf import io

    array = np.asarray(data[0] if meta.get("multiscale") else data)
    if not (array.ndim == 2 or (array.ndim == 3 and meta.get("rgb"))):
        raise ValueError(f"{path}: cvdm-tf writes 2-D or RGB images; this layer is {array.shape}")
    scale, units = meta.get("scale"), meta.get("units")
    pixel = None
    if scale is not None and units is not None and str(units[-1]).lower() in MICROMETRES:
        pixel = float(scale[-1])
    unit = (meta.get("metadata") or {}).get("unit", "")
    name = meta.get("name", "image")
    written = io.write_tiff(path, array, pixel_size_um=pixel, channels=None if array.ndim == 3 else
                            [f"{name} ({unit})" if unit else name], description=f"napari layer {name}, by cvdm-tf")
    return [str(written)]
