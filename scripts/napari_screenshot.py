"""The README's picture of the napari plugin: a QPI pair reconstructed in the viewer with the Reconstruct widget.

    python scripts/napari_screenshot.py                      # builtin:qpi -> docs/napari-widget.png
    python scripts/napari_screenshot.py --model runs/qpi --out shot.png --size 128 --steps 20

Runs headless (QT_QPA_PLATFORM=offscreen unless set). tests/test_napari.py calls `screenshot`
with a tiny run, so the picture's code path is tested.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def simulated_pair(task, size: int) -> np.ndarray:
    """A noise-free QPI intensity pair [2, size, size] of a smooth cell-like phase (a few Gaussian bumps)."""
    y, x = np.mgrid[:size, :size] / size
    phase = sum(a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s**2))
                for a, cx, cy, s in ((1.2, 0.35, 0.4, 0.12), (0.8, 0.65, 0.6, 0.1), (0.6, 0.6, 0.25, 0.07)))
    pair = np.asarray(task.measure(phase.astype(np.float32)), dtype=np.float32)  # [H, W, 2]
    return np.moveaxis(pair, -1, 0)


def screenshot(path, model: str = "builtin:qpi", size: int = 96, samples: int = 4, steps: int = 20,
               timeout_s: float = 300.0, viewer=None) -> Path:
    """Reconstruct a simulated QPI pair with the Reconstruct widget and save the widget (after the run) as a PNG.

    The widget is grabbed, not the viewer's canvas: the canvas needs an OpenGL context, which a headless
    offscreen Qt (CI) does not have; the widget's own controls draw without one.

    Args:
        path: the PNG to write.
        model: a QPI run folder or built-in model.
        size: side of the simulated pair in px.
        samples, steps: K and T of the reconstruction.
        timeout_s: how long to wait for the reconstruction.
        viewer: a napari Viewer or ViewerModel, or None (a new headless ViewerModel).

    Returns:
        Path: `path`.
    """
    from napari.components import ViewerModel
    from qtpy.QtWidgets import QApplication

    from cvdm_tf.napari.widget import ReconstructWidget
    from cvdm_tf.runs import load_run

    app = QApplication.instance() or QApplication([])
    viewer = viewer if viewer is not None else ViewerModel(title="cvdm-tf")
    _, task, _ = load_run(model)
    widget = ReconstructWidget(viewer)
    pair = viewer.add_image(simulated_pair(task, size), name="pair", scale=(task.output_pixel_size_um,) * 2,
                            colormap="gray")
    widget.image.value = pair
    widget.set_model(model)
    widget.samples.value, widget.steps.value = samples, steps
    worker = widget.start()
    deadline = time.monotonic() + timeout_s
    while widget.worker is not None and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    app.processEvents()
    if worker is None or not widget.last_layers:
        raise RuntimeError(f"the reconstruction did not finish: {widget.status.value}")
    widget.native.resize(max(widget.native.sizeHint().width(), 420), widget.native.sizeHint().height())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not widget.native.grab().save(str(path), "PNG"):
        raise OSError(f"{path}: cannot write the PNG")
    widget.native.close()
    return Path(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:qpi")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "napari-widget.png"))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    print(screenshot(args.out, args.model, args.size, args.samples, args.steps))


if __name__ == "__main__":
    sys.exit(main())
