"""Export a run as a BioImage Model Zoo package (bioimage.io model spec 0.5): `cvdm-tf export --format bioimageio`.

The package is one zip that deepImageJ, ilastik, the napari / QuPath bioimage.io tools and `bioimageio.core` read:

    rdf.yaml            the description (bioimageio.spec's `ModelDescr`, validated when it is built)
    weights.zip         a TensorFlow SavedModel (`tensorflow_saved_model_bundle`) with the whole sampler inside:
                        the raw measurement in, point estimate, std and schedule out in physical units
                        (`cvdm_tf.export`),
                        K, T and the seed fixed, float32 throughout (bfloat16 would differ between CPUs)
    test_*.npy          a held-out measurement and the output the SavedModel gives for it
    cover.png           the inference preview of that measurement (input | point estimate | std | schedule)
    README.md           what the model does, its physics, its validation, what consumers can and cannot run

What differs from the plain SavedModel (`cvdm-tf export`): one input, so the measurement's physics is the run's
(QPI: wavelength, pixel size and defocus of the run's config, stated in the description and on the input axes'
scale); one output, "reconstruction", whose channels are the run's point estimate (`sampler.estimate`, the card's:
the samples' mean, their median or the mean network's output), the std and the schedule (bioimage.io's
TensorFlow runner reads a dict of outputs by position, and a restored SavedModel's dict order changes from
process to process). The graph normalises each image as a whole (QPI: its mean
intensity and a Fourier-space TIE estimate; BioSR: its percentiles): consumers that cut an image into tiles and
normalise each tile on its own get other numbers than `cvdm-tf infer`, which normalises first and tiles after.

Needs the optional extra `cvdm-tf[bioimageio]` (bioimageio.spec to describe and zip, bioimageio.core to test).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cvdm_tf import __version__
from cvdm_tf.errors import InputError

CVDM_PAPER = "Della Maggiora, G. et al. (2024). Conditional Variational Diffusion Models. ICLR 2024."
CVDM_DOI = "10.48550/arXiv.2312.02246"
# Same seed, same float32 graph: equal on one machine; another CPU's kernels may round differently.
TOLERANCE = dict(relative_tolerance=1e-3, absolute_tolerance=1e-3, mismatched_elements_per_million=100)
# The point estimate (`sampler.estimate`) in the package's words.
ESTIMATE_WORDS = {"mean": "the mean of the K samples", "median": "the median of the K samples",
                  "mean_network": "the mean network's output"}


def export_package(run_dir, out_path, steps: int | None = None, samples: int | None = None, seed: int = 0,
                   test_input=None) -> Path:
    """Write the bioimage.io package of the run in `run_dir` (a run folder or `builtin:NAME`) to `out_path` (.zip).

    Args:
        run_dir: a run folder of `cvdm-tf train`, or `builtin:NAME`.
        out_path: the zip to write; must not exist.
        steps, samples: T and K of the packaged sampler (default: the run's sampler).
        seed: the packaged sampler's seed.
        test_input: a measurement file for the package's test tensors (default for a built-in model: the first
            of its held-out measurements; a run folder needs one).

    Raises:
        InputError: the extra is not installed, `out_path` exists or is not a .zip, no test input.
    """
    try:
        from bioimageio.spec import save_bioimageio_package
    except ImportError:
        raise InputError("--format bioimageio needs the optional extra: pip install 'cvdm-tf[bioimageio]'") from None
    from cvdm_tf import builtin
    from cvdm_tf.runs import load_run

    out_path = Path(out_path)
    for key, value in (("steps", steps), ("samples", samples)):
        if value is not None and value < 1:
            raise InputError(f"--{key}: must be >= 1, got {value}")
    if out_path.suffix.lower() != ".zip":
        raise InputError(f"{out_path}: a bioimage.io package is a .zip file")
    if out_path.exists():
        raise InputError(f"{out_path}: exists (remove it first)")
    if test_input is None and not builtin.is_builtin(run_dir):
        raise InputError("--test-input: a measurement file is needed for the package's test tensors")
    config, task, model = load_run(run_dir)
    sampler = dataclasses.replace(config.sampler, precision="float32", steps=steps or config.sampler.steps,
                                  samples=samples or config.sampler.samples)
    raw = _test_measurement(run_dir, task, config, test_input)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        weights, output = _weights(model, task, config, sampler, seed, raw, work)
        descr = _describe(run_dir, config, task, model, sampler, seed, raw, output, weights, work)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        partial = out_path.with_name(f".{out_path.name}.partial")
        try:
            save_bioimageio_package(descr, output_path=partial)
            partial.replace(out_path)
        finally:
            partial.unlink(missing_ok=True)
    return out_path


def _test_measurement(run_dir, task, config, test_input) -> np.ndarray:
    """The raw measurement [h, w, C] of the package's test tensors."""
    from cvdm_tf import builtin

    if test_input is not None:
        _, images = task.read_file(test_input)
        return np.asarray(images[0], np.float32)
    return builtin.sample_measurement(run_dir)[1]


def _weights(model, task, config, sampler, seed, raw, work: Path):
    """The SavedModel zipped (path), and its output for `raw` ([1, H, W, 3 C]: the run's point estimate, std,
    schedule) from the saved graph as bioimage.io's runner calls it (Keras' TFSMLayer on the `serve` endpoint)."""
    import keras
    import tensorflow as tf

    from cvdm_tf.config import dump_config
    from cvdm_tf.export import ExportedSampler, save

    module = ExportedSampler(model, task, steps=sampler.steps, samples=sampler.samples, method=sampler.method,
                             seed=seed, sampler_config=sampler, physics_inputs=False, stacked=True,
                             estimate=sampler.estimate)
    saved = save(module, dump_config(config.replace(sampler=dataclasses.asdict(sampler))), work / "saved_model")
    weights = Path(shutil.make_archive(str(work / "weights"), "zip", root_dir=saved))
    out = keras.layers.TFSMLayer(str(saved), call_endpoint="serve")(tf.constant(raw[None]))
    return weights, np.asarray(out["reconstruction"], np.float32)


def _describe(run_dir, config, task, model, sampler, seed, raw, output, weights, work: Path):
    """The package's `ModelDescr` (bioimageio.spec validates it here), its files written into `work`."""
    import tensorflow as tf
    from bioimageio.spec.model import v0_5 as spec

    from cvdm_tf import builtin
    from cvdm_tf.io import write_png
    from cvdm_tf.previews import preview_image

    name = builtin.card(run_dir)["name"] if builtin.is_builtin(run_dir) else Path(run_dir).name
    np.save(work / "test_measurement.npy", raw[None])
    np.save(work / "test_reconstruction.npy", output)
    estimate, std, schedule = np.split(output[0], 3, axis=-1)
    write_png(work / "cover.png", preview_image(raw, estimate, std, schedule, unit=task.target_unit,
                                                estimate=sampler.estimate))
    readme = work / "README.md"
    readme.write_text(_readme(run_dir, config, task, sampler, seed), encoding="utf-8")

    multiple = model.model_config.size_multiple
    pixel_in = task.measurement_pixel_size_um
    space = dict(unit="micrometer") if pixel_in else {}

    def input_axis(axis):
        return spec.SpaceInputAxis(id=spec.AxisId(axis), size=spec.ParameterizedSize(min=4 * multiple, step=multiple),
                                   **({"scale": pixel_in} if pixel_in else {}), **space)

    def output_axis(axis):
        return spec.SpaceOutputAxis(
            id=spec.AxisId(axis), size=spec.SizeReference(tensor_id=spec.TensorId("measurement"),
                                                          axis_id=spec.AxisId(axis)),
            # scale: the output grid's pixel; its size follows from the input's as size_in * scale_in / scale_out.
            **({"scale": task.output_pixel_size_um} if pixel_in else {"scale": 1.0 / task.scale}), **space)

    channels = [spec.Identifier(channel) for channel in task.measurement_names]
    measurement = spec.InputTensorDescr(
        id=spec.TensorId("measurement"),
        description=f"the raw measurement, whole (channels: {', '.join(task.measurement_names)})",
        axes=[spec.BatchAxis(), input_axis("y"), input_axis("x"), spec.ChannelAxis(channel_names=channels)],
        test_tensor=spec.FileDescr(source=work / "test_measurement.npy"),
    )
    unit = f"_{task.target_unit}" if task.target_unit else ""
    in_units = task.target_unit or "the input's units"
    names = [f"{what}_{target}{unit if what != 'schedule' else ''}"
             for what in (sampler.estimate, "std", "schedule") for target in task.target_names]
    reconstruction = spec.OutputTensorDescr(
        id=spec.TensorId("reconstruction"),
        # At most 128 characters (the spec).
        description=f"point estimate ({ESTIMATE_WORDS[sampler.estimate]}) and std of the K samples ({in_units}); "
                    "learned schedule tau * rho(1)",
        axes=[spec.BatchAxis(), output_axis("y"), output_axis("x"),
              spec.ChannelAxis(channel_names=[spec.Identifier(name) for name in names])],
        test_tensor=spec.FileDescr(source=work / "test_reconstruction.npy"))
    tolerance = spec.ReproducibilityTolerance(output_ids=[spec.TensorId("reconstruction")], **TOLERANCE)
    version = tf.__version__.split("-")[0]
    return spec.ModelDescr(
        name=f"cvdm-tf {name}",
        description=(f"Conditional variational diffusion model (CVDM, ICLR 2024), {task.description}: K = "
                     f"{sampler.samples} samples of {sampler.steps} {sampler.method} steps: the point estimate "
                     f"({ESTIMATE_WORDS[sampler.estimate]}), their std and the learned schedule."),
        authors=[spec.Author(name="cvdm-tf developers")],
        cite=[spec.CiteEntry(text=CVDM_PAPER, doi=spec.Doi(CVDM_DOI))],
        license=spec.LicenseId("MIT"),
        documentation=spec.FileDescr(source=readme),
        covers=[spec.FileDescr(source=work / "cover.png")],
        tags=["diffusion", "uncertainty", "tensorflow", "cvdm", *task.package_tags],
        version=spec.Version(__version__),
        inputs=[measurement],
        outputs=[reconstruction],
        weights=spec.WeightsDescr(tensorflow_saved_model_bundle=spec.TensorflowSavedModelBundleWeightsDescr(
            source=spec.FileDescr(source=weights).source, tensorflow_version=spec.Version(version))),
        config=spec.Config(bioimageio=spec.BioimageioConfig(reproducibility_tolerance=[tolerance])),
    )


def _readme(run_dir, config, task, sampler, seed) -> str:
    from cvdm_tf import builtin

    lines = [f"# cvdm-tf: {task.description}", "",
             "A conditional variational diffusion model (Della Maggiora et al., ICLR 2024) exported by "
             f"cvdm-tf {__version__}. The SavedModel holds the whole sampler: the raw measurement in, the point "
             f"estimate ({ESTIMATE_WORDS[sampler.estimate]}), the std of K = {sampler.samples} samples "
             f"({sampler.steps} {sampler.method} steps, seed {seed}, float32) and the learned schedule out.", "",
             "## Input", "", f"{task.describe_measurement()}; {task.describe_physics() or 'no physics to state'}.",
             "The graph normalises each image as a whole: give it whole images. A consumer that tiles and "
             "normalises each tile on its own (deepImageJ and ilastik do by default) gets other numbers; "
             "deepImageJ and ilastik can run it on an image that fits in memory as one tile. Other physics "
             "(another microscope) needs `cvdm-tf infer` or `cvdm_tf.load(...).predict(...)`, which take it as "
             "arguments.", "",
             "## Validation", ""]
    if builtin.is_builtin(run_dir):
        card = builtin.card(run_dir)
        lines += [f"Trained with `{card['trained_with']}` ({card['training_cost']}) on {card['training_data']}.", "",
                  f"Held-out benchmark (`{card['benchmark']['command']}`): {card['benchmark']['result']}.", ""]
    else:
        lines += [f"A run of `cvdm-tf train --task {config.task}` ({config.train.steps} steps); see the run's own "
                  "evaluation (`cvdm-tf eval`).", ""]
    lines += ["## Citation", "", CVDM_PAPER + f" doi:{CVDM_DOI}", ""]
    return "\n".join(lines)
