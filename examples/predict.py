"""Reconstruct a held-out QPI measurement with the built-in model, from Python (offline, about 20 s on 2 cores):

    python examples/predict.py [OUT.tif]

The measurement is a camera frame of a cell field the model never saw (I(-dz), I(+dz) through the default
microscope, the paper's noise), the one napari's sample data opens. Replace it with your own pair as an array
[H, W, 2] or [2, H, W] (e.g. `tifffile.imread("pair.tif")`) and your microscope's physics.
"""

import sys

import numpy as np

import cvdm_tf
from cvdm_tf import builtin, io


def main(out_path=None):
    _, pair = builtin.sample_measurement("builtin:qpi")
    model = cvdm_tf.load("builtin:qpi")
    out = model.predict(pair, wavelength_um=0.521, pixel_size_um=0.21, defocus_um=1.0)
    print(f"{model}: phase {out.mean.shape[0]} x {out.mean.shape[1]} px of {out.pixel_size_um} um, "
          f"{out.mean.min():.2f} to {out.mean.max():.2f} {out.unit}, mean std {np.mean(out.std):.3f} {out.unit}")
    if out_path:
        io.write_tiff(out_path, out.mean, pixel_size_um=out.pixel_size_um, channels=[f"phase ({out.unit})"])
        print(f"wrote {out_path}")
    return out


if __name__ == "__main__":
    main(*sys.argv[1:2])
