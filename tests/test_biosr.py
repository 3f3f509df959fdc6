"""The BioSR task end to end: units and the 2x grid, training on a tiny BioSR-layout tree of real MRC files,
infer (2-D widefield and 9-frame raw SIM stacks, TIFF and MRC) with physical pixel sizes, eval with its
baselines, simulate, and bad input."""

import json

import mrcfile
import numpy as np
import pytest
import tensorflow as tf
import tifffile
from click.testing import CliRunner

from cvdm_tf import io
from cvdm_tf.cli.main import main
from cvdm_tf.config import default_config
from cvdm_tf.tasks import make_task
from cvdm_tf.tasks.biosr import BioSRTask, DataConfig, upsample

TINY_BIOSR = {
    "model": dict(base_filters=4, depth=2, tau_base_filters=4, tau_depth=1, time_units=4),
    "train": dict(steps=4, batch_size=2, log_every=2, checkpoint_every=2, preview_every=4),
    "sampler": dict(steps=3, samples=2),
    "data": dict(image_size=16, cells=4, cell_size=32),
}


def tiny_biosr_config(**data):
    config = default_config("biosr")
    merged = {name: dict(values) for name, values in TINY_BIOSR.items()}
    merged["data"].update(data)
    return config.replace(**merged)


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _structure(rng, size=32):
    """Sparse puncta: a density a fluorescence microscope could image."""
    density = np.zeros((size, size), np.float32)
    density[rng.integers(2, size - 2, 12), rng.integers(2, size - 2, 12)] = 1.0
    return density


@pytest.fixture(scope="module")
def biosr_tree(tmp_path_factory):
    """BioSR as published, tiny: Microtubules/Cell_00N/RawSIMData_level_0L.mrc (9 raw frames, 16 x 16) and
    SIM_gt.mrc (32 x 32), 3 cells x 2 levels, written with mrcfile; the raw frames sum to a widefield image of
    the simulated structure."""
    root = tmp_path_factory.mktemp("BioSR")
    rng = np.random.default_rng(3)
    task = make_task("biosr")
    for cell in range(1, 4):
        folder = root / "Microtubules" / f"Cell_{cell:03d}"
        folder.mkdir(parents=True)
        wide, target = task.simulate(tf.constant(_structure(rng)), 200.0, tf.constant([cell, 0], tf.int64))
        with mrcfile.new(folder / "SIM_gt.mrc", overwrite=True) as mrc:
            mrc.set_data((target.numpy() * 1000).astype(np.uint16))
        for level in (1, 2):
            frames = np.maximum(wide.numpy() / 9 * level, 0)[None].repeat(9, axis=0)
            with mrcfile.new(folder / f"RawSIMData_level_{level:02d}.mrc", overwrite=True) as mrc:
                mrc.set_data(np.round(frames).astype(np.uint16))
    return root


@pytest.fixture(scope="module")
def biosr_run(tmp_path_factory, biosr_tree):
    from cvdm_tf.training import train

    out = tmp_path_factory.mktemp("runs") / "biosr"
    train(tiny_biosr_config(source=str(biosr_tree)), out)
    return out


# === Units and grids ===


def test_condition_is_on_the_2x_grid_and_units_invert_the_normalisation(rng):
    task = BioSRTask(DataConfig())
    widefield = tf.constant(rng.uniform(10, 200, (2, 8, 12, 1)).astype(np.float32))
    y = task.condition(widefield)
    assert y.shape == (2, 16, 24, 1)
    offset, scale = task.units(widefield)
    # The normalised widefield itself maps back to the widefield: x = 2 (v - p_lo) / (p_hi - p_lo) - 1.
    lo = widefield.numpy().min(axis=(1, 2, 3), keepdims=True)
    hi = widefield.numpy().max(axis=(1, 2, 3), keepdims=True)
    x = 2 * (widefield.numpy() - lo) / (hi - lo) - 1
    np.testing.assert_allclose(x * scale.numpy() + offset.numpy(), widefield.numpy(), rtol=1e-5)


def test_upsample_keeps_a_constant_and_the_mean_of_a_smooth_image():
    constant = tf.fill([1, 4, 6, 1], 3.0)
    np.testing.assert_allclose(upsample(constant, 2).numpy(), 3.0, rtol=1e-6)
    yy, xx = np.mgrid[0:16, 0:16]
    smooth = np.sin(2 * np.pi * xx / 16)[None, ..., None].astype(np.float32)
    up = upsample(tf.constant(smooth), 2).numpy()
    # Binning the upsampled image 2x2 gives the original back (half-pixel-centred grids), up to interpolation.
    binned = up[0, :, :, 0].reshape(16, 2, 16, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(binned, smooth[0, ..., 0], atol=0.03)


def test_simulated_pairs_resolve_more_in_the_target_than_in_the_widefield(rng):
    task = BioSRTask(DataConfig(noise="none"))
    stripes = np.zeros((64, 64), np.float32)
    stripes[:, ::4] = 1.0  # period 125 nm: between the SIM (~101 nm) and widefield (~202 nm) resolution
    wide, target = task.simulate(tf.constant(stripes), 1.0, tf.constant([0, 0], tf.int64))
    contrast = lambda image: float(np.ptp(image.mean(axis=0)) / image.mean())  # noqa: E731
    assert contrast(upsample(wide[None, ..., None], 2).numpy()[0, ..., 0]) < 0.02
    assert contrast(target.numpy()) > 0.2


def test_training_pairs_from_simulated_cells_are_in_range_and_reproducible():
    from cvdm_tf.data.pipeline import make_dataset

    task = BioSRTask(DataConfig(cells=3, cell_size=32, image_size=16))
    train, val, described = task.training_banks(0.0, 0, 16)
    assert val is None and "3 training" in described
    batches = [[b.numpy() for b in batch] for batch in make_dataset(task, train, 16, 2, seed=1).take(2)]
    again = [[b.numpy() for b in batch] for batch in make_dataset(task, train, 16, 2, seed=1).take(2)]
    for (y, x), (y2, x2) in zip(batches, again):
        assert y.shape == x.shape == (2, 16, 16, 1)
        assert -1 <= x.min() and x.max() <= 1
        assert -1.2 <= y.min() and y.max() <= 1.2  # bicubic upsampling overshoots a little at edges
        np.testing.assert_array_equal(y, y2)


# === End to end on a BioSR-layout tree ===


@pytest.mark.slow
def test_train_infer_eval_on_a_biosr_tree(biosr_run, biosr_tree, tmp_path):
    from cvdm_tf.config import load_config

    assert load_config(biosr_run / "config.toml").task == "biosr"
    header = (biosr_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"schedule_spread", "gamma_1_max", "gbar_gap"} <= set(header)
    # infer: a raw SIM stack (MRC) is summed; a 2-D widefield TIFF is taken as it is.
    cell = biosr_tree / "Microtubules" / "Cell_001"
    wide = mrcfile.read(cell / "RawSIMData_level_01.mrc").astype(np.float32).sum(axis=0)
    inputs = tmp_path / "in"
    io.write_tiff(inputs / "wide.tif", wide)
    (inputs / "raw.mrc").write_bytes((cell / "RawSIMData_level_01.mrc").read_bytes())
    out = tmp_path / "out"
    result = _invoke("infer", "--model", biosr_run, "--input", inputs, "--out", out, "--samples", 2, "--steps", 2)
    assert result.exit_code == 0, result.stderr
    for name in ("wide", "raw"):
        mean = tifffile.imread(out / f"{name}_mean.tif")
        assert mean.shape == (32, 32) and np.isfinite(mean).all()
        assert io.tiff_pixel_size_um(out / f"{name}_mean.tif") == pytest.approx(0.0313)
    # The default's point estimate, its mean network's (trained with L1: the median), is written unasked and its
    # channel says what it estimates.
    with tifffile.TiffFile(out / "wide_mean_network.tif") as tif:
        channel = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["Channel"]["Name"]
    assert channel.startswith("median of x|y of the mean network")
    # Same widefield, same seed: the stack and the summed image give the same reconstruction.
    np.testing.assert_allclose(tifffile.imread(out / "raw_mean.tif"), tifffile.imread(out / "wide_mean.tif"),
                               rtol=1e-5, atol=1e-3)
    # In the input's intensity units: within the widefield's range (the normalisation's inverse).
    assert wide.min() - 1 <= tifffile.imread(out / "wide_mean.tif").mean() <= wide.max() + 1
    # eval on the tree: every method scored, per structure too.
    report_path = tmp_path / "report.json"
    result = _invoke("eval", "--model", biosr_run, "--data", biosr_tree, "--samples", 2, "--steps", 2,
                     "--rl-iterations", 5, "--out", report_path)
    assert result.exit_code == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert len(report["images"]) == 6 and set(report["groups"]) == {"Microtubules"}
    for method in ("cvdm", "bicubic", "richardson-lucy"):
        values = report["mean"][method]
        assert 0 <= values["mae"] <= 1 and 0 < values["ms_ssim"] <= 1 and values["psnr"] > 0
        assert values["resolution_nm"] >= 2 * 31.3 - 1e-6  # never finer than Nyquist (2 SIM pixels)
    assert report["rl_iterations"] == 5
    assert "| richardson-lucy |" in result.stdout


@pytest.mark.slow
def test_export_serves_the_2x_grid(biosr_run, tmp_path):
    out = tmp_path / "export"
    result = _invoke("export", "--model", biosr_run, "--out", out, "--steps", 2, "--samples", 2)
    assert result.exit_code == 0, result.stderr
    loaded = tf.saved_model.load(str(out))
    wide = tf.constant(np.random.default_rng(0).uniform(0, 50, (1, 12, 20, 1)).astype(np.float32))
    served = loaded.signatures["serving_default"](condition=wide)
    assert served["mean"].shape == (1, 24, 40, 1)


def test_spectra_are_compared_where_the_targets_otf_is_above_ten_percent():
    from cvdm_tf.physics import optics

    task = BioSRTask(DataConfig())
    d = task.data
    size = 512
    # The OTF computed numerically (the pupil's autocorrelation by FFT), along f_x from 0 to just below Nyquist.
    transfer = optics.otf(size, size, d.pixel_size_um, 2 * d.na, d.wavelength_um).numpy()[0, : size // 2]
    at_limit = np.interp(task.target_band_limit, np.arange(size // 2) / (size / 2), transfer)
    assert at_limit == pytest.approx(0.10, abs=0.01)
    assert task.target_band_limit == pytest.approx(0.50, abs=0.01)


def test_bicubic_and_richardson_lucy_baselines_score_against_the_truth(rng):
    from cvdm_tf.tasks.base import Case

    task = BioSRTask(DataConfig())
    structure = np.zeros((64, 64), np.float32)
    structure[rng.integers(4, 60, 20), rng.integers(4, 60, 20)] = 1.0
    wide, target = task.simulate(tf.constant(structure), 2000.0, tf.constant([0, 1], tf.int64))
    case = Case("c", wide.numpy()[..., None], target.numpy())
    baselines = {name: make() for name, make in task.baselines().items()}
    tuned = baselines["richardson-lucy"].tune([case])
    assert tuned["rl_iterations"] in baselines["richardson-lucy"].CANDIDATES
    scores = {name: task.score(baseline(case.measurement), case.truth) for name, baseline in baselines.items()}
    assert scores["richardson-lucy"]["mae"] < scores["bicubic"]["mae"]
    perfect = task.score(case.truth, case.truth)
    assert perfect["mae"] == 0 and perfect["ms_ssim"] == pytest.approx(1.0) and perfect["spectral_db"] == 0
    # Bicubic upsampling of the widefield image lacks the truth's fine structure: dB away from its spectrum.
    assert scores["bicubic"]["spectral_db"] > 3


def test_simulate_writes_pairs_that_train_reads(tmp_path, rng):
    structures = tmp_path / "structures"
    for i in range(2):
        io.write_tiff(structures / f"s{i}.tif", _structure(rng, 40))
    out = tmp_path / "pairs"
    result = _invoke("simulate", "--task", "biosr", "--input", structures, "--out", out, "--noise", "none")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (out / "wf").iterdir()) == ["s0.tif", "s1.tif"]
    assert tifffile.imread(out / "wf" / "s0.tif").shape == (20, 20)
    assert tifffile.imread(out / "gt" / "s0.tif").shape == (40, 40)
    assert io.tiff_pixel_size_um(out / "wf" / "s0.tif") == pytest.approx(0.0626)
    task = BioSRTask(DataConfig(source=str(out), image_size=16))
    train, _, described = task.training_banks(0.0, 0, 16)
    crop = train.random_crop(16, tf.constant([0, 0], tf.int64))
    assert crop["widefield"].shape == (8, 8, 1) and crop["target"].shape == (16, 16, 1)


def test_a_qpi_option_is_refused_for_biosr(tmp_path):
    result = _invoke("simulate", "--task", "biosr", "--input", tmp_path, "--out", tmp_path / "o", "--defocus", 2)
    assert result.exit_code == 2 and "--defocus: not an option of task biosr" in result.stderr


# === Bad input: one line, exit 2, nothing partial ===


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["truncated", "wrong-mode", "frames"])
def test_bad_widefield_files(biosr_run, tmp_path, problem):
    bad = tmp_path / "in" / "bad.mrc"
    bad.parent.mkdir()
    if problem == "frames":
        with mrcfile.new(bad) as mrc:
            mrc.set_data(np.ones((7, 16, 16), np.uint16))
        expected = "7"
    else:
        with mrcfile.new(bad) as mrc:
            mrc.set_data(np.ones((9, 16, 16), np.complex64 if problem == "wrong-mode" else np.uint16))
        if problem == "truncated":
            bad.write_bytes(bad.read_bytes()[:-100])
        expected = "truncated" if problem == "truncated" else "mode"
    result = _invoke("infer", "--model", biosr_run, "--input", bad, "--out", tmp_path / "out")
    assert result.exit_code == 2
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert str(bad) in error and expected in error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("problem", ["no-target", "not-2x"])
def test_bad_trees_fail_training_before_anything_is_written(tmp_path, problem):
    cell = tmp_path / "data" / "CCPs" / "Cell_001"
    cell.mkdir(parents=True)
    with mrcfile.new(cell / "RawSIMData_level_01.mrc") as mrc:
        mrc.set_data(np.ones((9, 16, 16), np.uint16))
    if problem == "not-2x":
        with mrcfile.new(cell / "SIM_gt.mrc") as mrc:
            mrc.set_data(np.ones((30, 32), np.uint16))
    out = tmp_path / "run"
    result = _invoke("train", "--task", "biosr", "--data", tmp_path / "data", "--out", out, "--steps", 1,
                     "--image-size", 16)
    assert result.exit_code == 2, result.output
    # The line that says training starts (options and config were good), then the one error line.
    starting, error = result.stderr.splitlines()
    assert starting.startswith(f"starting biosr training in {out}") and error.startswith("error: ")
    assert ("SIM_gt.mrc" in error) if problem == "no-target" else ("not 2x" in error)
    assert not out.exists()


@pytest.mark.slow
def test_the_regression_baseline_trains_infers_exports_and_evaluates_through_the_same_run_folder(
        biosr_tree, biosr_run, tmp_path):
    run = tmp_path / "regression"
    result = _invoke("train", "--task", "biosr", "--kind", "regression", "--data", biosr_tree, "--out", run,
                     "--steps", 3, "--image-size", 16)
    assert result.exit_code == 0, result.output
    wide = tmp_path / "in" / "wide.tif"
    io.write_tiff(wide, np.random.default_rng(0).uniform(0, 100, (12, 20)).astype(np.float32))
    result = _invoke("infer", "--model", run, "--input", wide, "--out", tmp_path / "out", "--samples", 3)
    assert result.exit_code == 0, result.stderr
    assert tifffile.imread(tmp_path / "out" / "wide_mean.tif").shape == (24, 40)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "wide_std.tif"), 0.0)
    # Its one output is its estimate, whatever the task's CVDM estimates with (biosr: the mean network's).
    assert not list((tmp_path / "out").glob("wide_me*_*.tif")) and not list((tmp_path / "out").glob("*median*"))
    result = _invoke("export", "--model", run, "--out", tmp_path / "export")
    assert result.exit_code == 0, result.stderr
    # eval scores it beside a CVDM run, on the same cases.
    report_path = tmp_path / "report.json"
    result = _invoke("eval", "--model", biosr_run, "--compare", run, "--data", biosr_tree, "--samples", 2,
                     "--steps", 2, "--baseline", "bicubic", "--out", report_path)
    assert result.exit_code == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert set(report["mean"]) == {"cvdm", "regression", "bicubic"}
