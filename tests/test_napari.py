"""The napari plugin, headless: the widget on a tiny QPI run, its worker thread and Cancel, the reader of infer's
outputs, the manifest, and the README's screenshot. Skipped only where napari is not installed (`.[napari]`).

Offscreen Qt has no OpenGL context, so a Qt viewer cannot draw layers; the tests that add layers give the widget
a `ViewerModel` (napari's viewer without the canvas: the same layer list, dims and selection), and the real
`make_napari_viewer` is used where no layer is drawn (docking the widget through the manifest).
"""

import importlib.util
import os
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

napari = pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402
from qtpy.QtCore import QTimer  # noqa: E402

from cvdm_tf import io  # noqa: E402
from cvdm_tf.napari import reader  # noqa: E402
from cvdm_tf.napari.widget import ReconstructWidget  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "cvdm_tf" / "napari" / "napari.yaml"
WAIT_MS = 120_000  # a ceiling for a loaded CI machine; the runs take a few seconds


def _script():
    spec = importlib.util.spec_from_file_location("napari_screenshot", ROOT / "scripts" / "napari_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def qpi(tiny_run):
    from cvdm_tf.runs import load_run

    config, task, model = load_run(tiny_run)
    return config, task, model


@pytest.fixture
def pair(qpi):
    """A simulated intensity pair [2, 16, 16] of the tiny run's optics (napari's channel-first layout)."""
    return _script().simulated_pair(qpi[1], 16)


def _widget(qtbot, viewer, run, data, samples=2, steps=3):
    widget = ReconstructWidget(viewer)
    qtbot.addWidget(widget.native)
    widget.image.value = viewer.add_image(data, name="cell")
    widget.set_model(run)
    widget.samples.value, widget.steps.value, widget.seed.value = samples, steps, 4
    return widget


def test_widget_adds_mean_std_and_schedule_off_the_gui_thread(tiny_run, qpi, pair, qtbot):
    """Reconstruct adds 3 layers [16, 16] at the task's pixel size (QPI: radians), equal to `reconstruct` on the
    [H, W, 2] pair with the same seed; sampling runs in another thread while the GUI's event loop keeps turning,
    and progress reaches the GUI thread."""
    from cvdm_tf.inference import reconstruct
    from cvdm_tf.sampler import sampler_for

    config, task, model = qpi
    viewer = ViewerModel()
    widget = _widget(qtbot, viewer, tiny_run, pair, steps=12)
    main = threading.get_ident()
    ticks, progress_threads = [], []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(widget.worker is not None))
    timer.start(1)
    widget._relay.progress.connect(lambda *_: progress_threads.append(threading.get_ident()))

    assert widget.start() is not None and widget.worker is not None  # start() returns at once
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    timer.stop()

    assert widget.worker_thread is not None and widget.worker_thread != main
    assert any(ticks)  # the event loop ran while the worker sampled
    assert progress_threads and set(progress_threads) == {main}
    assert [layer.name for layer in viewer.layers] == ["cell", "cell_mean", "cell_std", "cell_schedule"]
    assert widget.image.value is viewer.layers["cell"] and widget.run_button.enabled
    expected = reconstruct(model, task, np.moveaxis(pair, 0, -1), samples=2, steps=12, method=config.sampler.method,
                           seed=4, batch_size=1, sampler=sampler_for(model, config.sampler))  # not chunked
    for layer in widget.last_layers:
        key = layer.metadata["cvdm_tf"]
        assert layer.data.shape == (16, 16)
        assert tuple(layer.scale) == pytest.approx((task.output_pixel_size_um,) * 2)
        np.testing.assert_array_equal(layer.data, expected[key][..., 0])
    assert widget.last_layers[0].metadata["unit"] == "rad" and widget.last_layers[2].metadata["unit"] == ""
    assert (widget.last_layers[1].data >= 0).all()
    assert widget.progress.value == widget.progress.max


def test_cancel_stops_a_long_run_within_one_chunk_and_adds_nothing(tiny_run, pair, qtbot):
    widget = _widget(qtbot, ViewerModel(), tiny_run, pair, steps=100_000)
    checks = []
    check = widget._check_cancel

    def counted():
        checks.append(widget._cancel.is_set())
        check()

    widget._check_cancel = counted
    done = []
    widget._relay.progress.connect(lambda *_: done.append(1))
    widget.start()
    qtbot.waitUntil(lambda: bool(done), timeout=WAIT_MS)  # the first chunk is through
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)

    assert checks.count(True) == 1  # the chunk running at Cancel finished, the next check raised
    assert checks.count(False) < 100_000 // 5  # far from the end
    assert "cancelled" in widget.status.value and widget.last_layers == []
    assert [layer.name for layer in widget.viewer.layers] == ["cell"]
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_reconstruct_three_times_seconds_apart_and_again_after_a_cancel(tiny_run, pair, qtbot):
    """Issue 23's hang: a second Reconstruct within 30 s of the first (Qt's thread pool keeps an idle thread that
    long, so the second job runs on the first one's thread). Each run here finishes and adds its layers, on one
    reused thread; after a Cancel mid-run the next one finishes too. (Not reproduced headless: the report was a
    drawing viewer, which offscreen Qt cannot make.)"""
    widget = _widget(qtbot, ViewerModel(), tiny_run, pair, steps=6)
    threads = []
    for _ in range(3):
        assert widget.start() is not None
        qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
        assert widget.status.value.startswith("added cell_mean") and len(widget.last_layers) == 3
        threads.append(widget.worker_thread)
        qtbot.wait(1000)
    assert len(set(threads)) == 1  # the pool's thread, reused: the path the hang took
    widget.steps.value = 100_000
    chunks = []
    widget._relay.progress.connect(lambda *_: chunks.append(1))
    widget.start()
    qtbot.waitUntil(lambda: bool(chunks), timeout=WAIT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert "cancelled" in widget.status.value
    widget.steps.value = 6
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value.startswith("added cell_mean")
    assert len([layer for layer in widget.viewer.layers if layer.name.startswith("cell_mean")]) == 4


def test_bad_input_is_reported_in_the_widget(tiny_run, qtbot):
    """A one-channel image for a QPI model: one error line in the status, no worker error escapes, no layers."""
    widget = _widget(qtbot, ViewerModel(), tiny_run, np.ones((16, 16), np.float32))
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value.startswith("error: cell: has 1 channel(s), the model needs 2")
    assert len(widget.viewer.layers) == 1


def test_widget_takes_the_measurements_physics_and_refuses_it_outside_the_range(tiny_run, qpi, pair, qtbot):
    """Wavelength, pixel size and defocus in the widget reach the reconstruction (as `reconstruct` with that
    physics) and the layers' scale; outside the model's range: one error line naming it, no layers."""
    from cvdm_tf.inference import reconstruct
    from cvdm_tf.sampler import sampler_for

    config, task, model = qpi
    widget = _widget(qtbot, ViewerModel(), tiny_run, pair)
    widget.wavelength.value, widget.pixel_size.value, widget.defocus.value = 0.6, 0.16, 2.0
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    other = task.with_physics(wavelength_um=0.6, pixel_size_um=0.16, defocus_um=2.0)
    expected = reconstruct(model, other, np.moveaxis(pair, 0, -1), samples=2, steps=3, method=config.sampler.method,
                           seed=4, batch_size=1, sampler=sampler_for(model, config.sampler))
    mean = widget.last_layers[0]
    assert tuple(mean.scale) == pytest.approx((0.16, 0.16))
    np.testing.assert_allclose(mean.data, expected["mean"][..., 0], atol=1e-5)
    widget.defocus.value = 40.0  # lam dz / dx^2 = 938
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value.startswith("error: cell: lam dz / dx^2 938 is outside the model's training range")
    assert len(widget.viewer.layers) == 4  # the first run's three, nothing more


def test_reader_opens_infer_outputs_with_their_pixel_size(tiny_run, qpi, pair, tmp_path):
    import npe2
    import tifffile

    from cvdm_tf.inference import infer_paths

    task = qpi[1]
    io.write_tiff(tmp_path / "in" / "cell.tif", np.moveaxis(pair, 0, -1), pixel_size_um=task.data.pixel_size_um)
    infer_paths(tiny_run, tmp_path / "in" / "cell.tif", tmp_path / "out", samples=2, steps=2, median=True)
    files = [tmp_path / "out" / f"cell_{key}.tif" for key in ("mean", "median", "std", "schedule")]
    assert reader.get_reader(str(tmp_path / "in" / "cell.tif")) is None
    assert reader.get_reader(str(tmp_path / "out" / "cell_preview.png")) is None
    assert reader.get_reader([str(f) for f in files]) is reader.read_outputs

    manager = npe2.PluginManager.instance()
    if "cvdm-tf" not in manager._manifests:  # an install without the entry point (not `pip install -e .`)
        manager.register(npe2.PluginManifest.from_file(MANIFEST))
    viewer = ViewerModel()
    viewer.open([str(f) for f in files], plugin="cvdm-tf", stack=False)
    assert [layer.name for layer in viewer.layers] == ["cell_mean", "cell_median", "cell_std", "cell_schedule"]
    for layer, file in zip(viewer.layers, files):
        np.testing.assert_array_equal(layer.data, tifffile.imread(file))
        assert tuple(layer.scale) == pytest.approx((task.output_pixel_size_um,) * 2)


@pytest.mark.slow
@pytest.mark.parametrize("key, model, scale", [("qpi_pair", "builtin:qpi", 1), ("biosr_widefield", "builtin:biosr", 2),
                                               ("sr4x_low_resolution", "builtin:sr4x", 4)])
def test_sample_data_opens_through_the_manifest_and_reconstructs(qtbot, key, model, scale):
    """File > Open Sample: the manifest's sample command gives a layer that names its built-in model; the widget
    takes that model when the layer is chosen and reconstructs it on the output grid at the output pixel size."""
    import npe2

    manifest = npe2.PluginManifest.from_file(MANIFEST)
    [sample] = [s for s in manifest.contributions.sample_data if s.key == key]
    [command] = [c for c in manifest.contributions.commands if c.id == sample.command]
    module, function = command.python_name.split(":")
    layers = getattr(importlib.import_module(module), function)()
    viewer = ViewerModel()
    widget = ReconstructWidget(viewer)
    qtbot.addWidget(widget.native)
    widget.set_model("builtin:qpi")
    [(data, kwargs, kind)] = layers
    assert kind == "image" and kwargs["metadata"]["cvdm_tf_model"] == model
    layer = viewer.add_image(data, **kwargs)
    widget.image.value = layer
    assert str(widget.model.line_edit.value) == model
    widget.samples.value, widget.steps.value = 2, 2
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value.startswith(f"added {kwargs['name']}_mean"), widget.status.value
    mean = widget.last_layers[0]
    # The card's point estimate, where it is not the mean, right after it.
    estimate = {"builtin:qpi": "std", "builtin:biosr": "mean_network", "builtin:sr4x": "mean_network"}[model]
    assert widget.last_layers[1].name == f"{kwargs['name']}_{estimate}"
    height, width = data.shape[-2:] if model == "builtin:qpi" else data.shape[:2]
    assert mean.data.shape[:2] == (scale * height, scale * width) and np.isfinite(mean.data).all()
    if "scale" in kwargs:  # the output grid's pixel
        assert mean.scale[-1] == pytest.approx(kwargs["scale"][-1] / scale)


def test_widget_guesses_the_builtin_model_from_the_layer_but_keeps_a_run_folder(tiny_run, qtbot):
    viewer = ViewerModel()
    widget = ReconstructWidget(viewer)
    qtbot.addWidget(widget.native)
    assert str(widget.model.line_edit.value) == "builtin:qpi"
    widget.image.value = viewer.add_image(np.ones((32, 32), np.float32), name="grey")
    assert str(widget.model.line_edit.value) == "builtin:biosr"
    widget.image.value = viewer.add_image(np.ones((2, 32, 32), np.float32), name="pair")
    assert str(widget.model.line_edit.value) == "builtin:qpi"
    widget.set_model(tiny_run)
    widget.image.value = viewer.layers["grey"]
    assert str(widget.model.line_edit.value) == str(tiny_run)


def test_writer_saves_a_layer_as_ome_tiff_with_its_pixel_size(tmp_path):
    import tifffile

    from cvdm_tf.data.stacks import pixel_size_um
    from cvdm_tf.napari.writer import write_image

    image = np.random.default_rng(0).random((12, 16)).astype(np.float32)
    meta = {"name": "cell_mean", "scale": (0.21, 0.21), "units": ("um", "um"), "metadata": {"unit": "rad"}}
    [path] = write_image(str(tmp_path / "cell.tif"), image, meta)
    np.testing.assert_array_equal(tifffile.imread(path), image)
    assert pixel_size_um(path) == pytest.approx(0.21)
    with tifffile.TiffFile(path) as tif:
        assert tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["Channel"]["Name"] == "cell_mean (rad)"
    [path] = write_image(str(tmp_path / "plain.tif"), image, {"name": "x", "scale": (2.0, 2.0),
                                                            "units": ("pixel", "pixel")})
    assert pixel_size_um(path) is None  # a scale in pixels is no physical size
    with pytest.raises(ValueError, match="2-D or RGB"):
        write_image(str(tmp_path / "stack.tif"), np.ones((3, 4, 4)), {"name": "stack"})


def test_manifest_validates_and_its_commands_import():
    import npe2

    manifest = npe2.PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    assert manifest.name == "cvdm-tf"
    assert [w.display_name for w in manifest.contributions.widgets] == ["Reconstruct (CVDM)"]
    patterns = manifest.contributions.readers[0].filename_patterns
    assert all(any(p.endswith(s) for p in patterns) for s in reader.SUFFIXES)


def test_plugin_dock_widget_in_a_real_viewer(make_napari_viewer):
    """Plugins > cvdm-tf > Reconstruct (CVDM): napari builds the widget from the manifest and hands it the viewer."""
    import npe2

    manager = npe2.PluginManager.instance()
    if "cvdm-tf" not in manager._manifests:
        manager.register(npe2.PluginManifest.from_file(MANIFEST))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("cvdm-tf", "Reconstruct (CVDM)")
    assert isinstance(widget, ReconstructWidget)
    assert getattr(widget.viewer, "__wrapped__", widget.viewer) is viewer  # napari hands plugins a proxy


def test_readme_screenshot(tiny_run, tmp_path, qtbot):
    """scripts/napari_screenshot.py (the README's picture) runs headless and draws the widget after a run."""
    from PIL import Image

    path = _script().screenshot(tmp_path / "widget.png", model=str(tiny_run), size=16, samples=2, steps=2)
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 10  # drawn controls, not a blank image
