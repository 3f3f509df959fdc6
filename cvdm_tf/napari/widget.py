"""The napari dock widget: a trained CVDM applied to the selected image layer, mean / std / schedule added back.

    image      the measurement layer (QPI: the intensity pair [2, H, W] or [H, W, 2], or a through-focus
               z-stack [Z, H, W] with its z step; BioSR: a widefield image; SR: a low-resolution image)
    model      a run folder of `cvdm-tf train`, or a built-in model `builtin:NAME`
    samples K  samples per pixel: the std is over these
    steps T    sampling steps (0: the run's own `sampler.steps`)
    sampler    the run's method, ddpm or ddim
    seed       same seed, same image -> same result
    z step     plane spacing of a QPI z-stack in um (0: the layer's z scale if set, else not a z-stack)
    tile       largest side sampled in one piece (larger images are tiled and blended, as `cvdm-tf infer`)
    wavelength, pixel size, defocus
               the measurement's physics (QPI), as `cvdm-tf infer --wavelength --pixel-size --defocus`; 0 = the
               run's (pixel size: the layer's scale if set); outside the model's range: an error naming the range

Reconstruct runs the Python API's `Model.predict` (`cvdm_tf.load`) in a worker thread (napari's
`create_worker`), so the viewer never blocks. The sampler runs in chunks of `CHUNK_STEPS` steps (`Sampler(...,
chunk=N)`): between chunks the progress bar moves and Cancel takes effect, so a cancelled run stops within one
chunk and adds nothing.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar, PushButton, SpinBox
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

from cvdm_tf.errors import InputError
from cvdm_tf.napari import layers

#: Sampling steps per compiled call: the progress bar's resolution and the most steps a Cancel waits for.
CHUNK_STEPS = 5
RUN_METHOD = "run's"


class Cancelled(Exception):
    """Raised in the worker (between two chunks of steps) when Cancel was pressed."""


@dataclass
class Job:
    """What one Reconstruct click samples: read from the widgets in the GUI thread, used in the worker."""

    model: str
    data: np.ndarray
    name: str
    samples: int
    steps: int
    method: str | None
    seed: int
    tile: int
    z_step_um: float | None
    plane: int
    pixel_size_um: float | None
    physics: dict  # the measurement's physics as given in the widget (None: the run's / the layer's)


class _Relay(QObject):
    """Qt signals emitted in the worker thread and delivered (queued) to the widget in the GUI thread."""

    progress = Signal(float, str)
    message = Signal(str)


class ReconstructWidget(Container):
    """Dock widget: Plugins > cvdm-tf > Reconstruct (CVDM). See the module docstring for the controls.

    Args:
        napari_viewer: napari.Viewer. Given by napari (npe2 injects the viewer).

    Attributes for scripts and tests: `worker` (the running worker or None), `last_layers` (the layers the last
    successful run added), `status` (the status line), `run_button`, `cancel_button`.
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=self._image_layers,
                              tooltip="The measurement layer: a QPI pair [2, H, W] / [H, W, 2] or z-stack, "
                                      "a widefield image (BioSR), a low-resolution image (SR)")
        self.model = FileEdit(label="model", mode="d",
                              tooltip="A run folder of `cvdm-tf train`, or a built-in model: "
                                      + (", ".join(_builtin_names()) or "builtin:NAME"))
        self.samples = SpinBox(label="samples K", value=0, min=0, max=512,
                               tooltip="Samples per pixel; the std is over these (0: the run's sampler.samples)")
        self.steps = SpinBox(label="steps T", value=0, min=0, max=100000,
                             tooltip="Sampling steps (0: the run's sampler.steps)")
        self.method = ComboBox(label="sampler", choices=[RUN_METHOD, "ddpm", "ddim"], value=RUN_METHOD)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.z_step = FloatSpinBox(label="z step (um)", value=0.0, min=0.0, max=1000.0, step=0.1,
                                   tooltip="QPI z-stack plane spacing (0: the layer's z scale if set)")
        self.tile = SpinBox(label="tile (px)", value=256, min=8, max=8192,
                            tooltip="Largest side sampled in one piece; larger images are tiled")
        # The measurement's physics (QPI), each 0 = the run's (pixel size: the layer's scale if set).
        self.wavelength = FloatSpinBox(label="wavelength (um)", value=0.0, min=0.0, max=10.0, step=0.01,
                                       tooltip="QPI: illumination wavelength (0: the run's)")
        self.pixel_size = FloatSpinBox(label="pixel size (um)", value=0.0, min=0.0, max=100.0, step=0.01,
                                       tooltip="QPI: pixel size at the sample (0: the layer's scale if set, else "
                                               "the run's)")
        self.defocus = FloatSpinBox(label="defocus (um)", value=0.0, min=0.0, max=1000.0, step=0.1,
                                    tooltip="QPI: defocus dz of the pair I(-dz), I(+dz); of a z-stack, the planes "
                                            "nearest to +-dz are paired (0: the run's)")
        self.run_button = PushButton(text="Reconstruct")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1000)
        self.status = Label(label="", value="")
        self.set_model(_default_model())
        self.extend([self.image, self.model, self.samples, self.steps, self.method, self.seed, self.z_step,
                     self.tile, self.wavelength, self.pixel_size, self.defocus, self.run_button, self.cancel_button,
                     self.progress, self.status])

        self.worker = None
        self.worker_thread = None  # the id of the thread the last run sampled in (for tests)
        self.last_layers: list = []
        self._adding = False
        self._cancel = threading.Event()
        self._loaded = None  # the cvdm_tf.api.Model last used: kept, its compiled sampler reused
        self._relay = _Relay()
        self._relay.progress.connect(self._show_progress)
        self._relay.message.connect(self._show_message)
        self.image.changed.connect(self._model_for_layer)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        # The selected layer becomes the image, as a user expects.
        napari_viewer.layers.selection.events.active.connect(self._follow_selection)

    # --- GUI thread ---
    def _image_layers(self, _widget=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, _event=None):
        self.image.reset_choices()

    def _follow_selection(self, event):
        layer = getattr(event, "value", None)
        if layer is not None and not self._adding and layer in [choice for _, choice in self._image_layers()]:
            self.image.value = layer

    def _model_for_layer(self, layer=None):
        """The model for a newly chosen layer: the one it names (sample data: metadata["cvdm_tf_model"]), else,
        while the field holds a built-in model, the built-in one of its shape (a pair or a 2-channel image: QPI;
        RGB: sr4x; a grey image: BioSR). A run folder the user chose stays."""
        if layer is None:
            return
        named = (getattr(layer, "metadata", None) or {}).get("cvdm_tf_model")
        current = str(self.model.line_edit.value).strip()
        if named:
            self.set_model(named)
        elif current.startswith("builtin:") or not current or current == ".":
            guess = _builtin_for(layer)
            if guess in _builtin_names():
                self.set_model(guess)

    def set_model(self, spec):
        """Put a run folder or `builtin:NAME` in the model field (as typed: FileEdit.value would resolve it)."""
        self.model.line_edit.value = str(spec)

    def job(self) -> Job:
        """The current settings and the selected layer's data (read in the GUI thread)."""
        layer = self.image.value
        if layer is None:
            raise InputError("no image layer: open or select the measurement first")
        spec = str(self.model.line_edit.value).strip()  # the text: FileEdit.value would make builtin:NAME a path
        if not spec or spec == ".":
            raise InputError("model: choose a run folder or type a built-in model (builtin:NAME)")
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        stack = layer.ndim == 3 and not layer.rgb
        z_step = self.z_step.value or (float(layer.scale[0]) if stack and layer.scale[0] != 1 else None)
        plane = int(self.viewer.dims.current_step[-3]) if stack and self.viewer.dims.ndim >= 3 else 0
        layer_pixel = float(layer.scale[-1]) if layer.scale[-1] != 1 else None
        physics = {"wavelength_um": self.wavelength.value or None,
                   "pixel_size_um": self.pixel_size.value or layer_pixel, "defocus_um": self.defocus.value or None}
        return Job(model=spec, data=np.asarray(data), name=layer.name, samples=self.samples.value,
                   steps=self.steps.value, method=None if self.method.value == RUN_METHOD else self.method.value,
                   seed=self.seed.value, tile=self.tile.value, z_step_um=z_step, plane=plane,
                   pixel_size_um=layer_pixel, physics=physics)

    def start(self, _value=None):
        """Reconstruct the selected layer in a worker thread; returns the worker (None if the input is bad)."""
        if self.worker is not None:
            return self.worker
        try:
            job = self.job()
        except InputError as err:
            self._show_message(f"error: {err}")
            return None
        self._cancel.clear()
        self.progress.value = 0
        self._show_message(f"reconstructing {job.name} ...")
        # Our own `errored` handler: errors become a status line, not a re-raise in the GUI thread.
        self.worker = create_worker(self._compute, job, _start_thread=False, _connect={
            "returned": self._add_layers, "errored": self._failed, "finished": self._finished})
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.worker.start()
        return self.worker

    def cancel(self, _value=None):
        """Stop the running reconstruction after its current chunk of steps; nothing is added."""
        if self.worker is not None:
            self._cancel.set()
            self._show_message("cancelling ...")

    def _add_layers(self, output):
        job, prediction = output
        added = []
        self._adding = True  # the new layers become selected; the input stays the image
        pixel = prediction.pixel_size_um or _output_pixel(job, self._loaded.task)
        try:
            for data, kwargs, _ in layers.output_layers(prediction, job.name, pixel):
                layer = self.viewer.add_image(data, **kwargs)
                added.extend(layer if isinstance(layer, list) else [layer])  # channel_axis: one per channel
        finally:
            self._adding = False
        self.last_layers = added
        self.progress.value = self.progress.max
        unit = f" (values in {prediction.unit})" if prediction.unit else ""
        self._show_message(f"added {', '.join(layer.name for layer in added)}{unit}")

    def _failed(self, error):
        if isinstance(error, Cancelled):
            self._show_message("cancelled; no layers added")
        elif isinstance(error, InputError):
            self._show_message(f"error: {error}")
        else:
            self._show_message(f"error: {type(error).__name__}: {error}")

    def _finished(self):
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False

    def _show_progress(self, fraction, text):
        self.progress.value = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        self._show_message(text)

    def _show_message(self, text):
        self.status.value = text

    # --- worker thread ---
    def _compute(self, job: Job):
        """Load (or reuse) the model and reconstruct the layer through the Python API (`Model.predict`, which
        reads the array as `cvdm-tf infer` reads a file): (job, prediction)."""
        self.worker_thread = threading.get_ident()
        self._check_cancel()
        model = self._load(job.model)
        self._check_cancel()
        # The physics fields are QPI's: a model of another task ignores them (and the layer's scale).
        physics = {key: value for key, value in job.physics.items() if key in model.task.physics_keys}
        state = {"tiles": 0, "total": 1}
        batch_size = 1  # one tile per call: the finest progress; the sampler is traced once for all tiles

        def tiles_done(done, total):
            state["tiles"], state["total"] = done, total
            self._check_cancel()

        def steps_done(done, total):
            self._check_cancel()
            fraction = (state["tiles"] + batch_size * done / total) / max(state["total"], 1)
            self._relay.progress.emit(fraction, f"{job.name}: tile {min(state['tiles'] + 1, state['total'])}/"
                                                f"{state['total']}, step {done}/{total}")

        try:
            prediction = model.predict(job.data, samples=job.samples or None, steps=job.steps or None,
                                       method=job.method, seed=job.seed, tile=job.tile, batch_size=batch_size,
                                       z_step_um=job.z_step_um, plane=job.plane,
                                       message=self._relay.message.emit, progress=tiles_done, chunk=CHUNK_STEPS,
                                       step_progress=steps_done, name=job.name, **physics)
        finally:
            # Only numpy arrays go back to the GUI thread, and this run's TensorFlow garbage (tensors in reference
            # cycles of the sampling closures) is freed here, not by a garbage collection that happens to run on
            # the GUI thread while the next run's worker is inside a TensorFlow op: the suspected cause of the
            # reported hang of a second Reconstruct within 30 s (not reproduced headless, where no viewer draws).
            gc.collect()
        return job, prediction

    def _check_cancel(self):
        if self._cancel.is_set():
            raise Cancelled()

    def _load(self, spec):
        """The `cvdm_tf.api.Model` of `spec`: one kept, its compiled sampler reused."""
        if self._loaded is None or self._loaded.spec != spec:
            import cvdm_tf

            self._relay.message.emit(f"loading {spec} ...")
            self._loaded = cvdm_tf.load(spec)
        return self._loaded


def _output_pixel(job, task):
    """The output pixel size when the task does not know it: the layer's pixel size over the task's scale."""
    return job.pixel_size_um / task.scale if job.pixel_size_um else None


def _builtin_names() -> list[str]:
    try:
        from cvdm_tf import builtin
    except ImportError:  # an install without built-in models
        return []
    return [builtin.PREFIX + name for name in builtin.names()]


def _builtin_for(layer) -> str:
    """The built-in model a layer's shape suggests."""
    shape = tuple(np.shape(layer.data[0] if getattr(layer, "multiscale", False) else layer.data))
    if getattr(layer, "rgb", False):
        return "builtin:sr4x"
    if len(shape) == 3 and (shape[0] == 2 or shape[-1] == 2):
        return "builtin:qpi"
    return "builtin:biosr" if len(shape) == 2 else "builtin:qpi"  # a z-stack: QPI through focus


def _default_model() -> str:
    names = _builtin_names()
    return "builtin:qpi" if "builtin:qpi" in names else names[0] if names else ""
