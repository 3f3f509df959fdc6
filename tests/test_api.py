"""The Python API (`cvdm_tf.load(...).predict(...)`): the CLI's reader, sampler defaults, physics and outputs."""

import numpy as np
import pytest
import tifffile

import cvdm_tf
from cvdm_tf import io
from cvdm_tf.errors import InputError
from cvdm_tf.tasks.qpi import DataConfig, QPITask


@pytest.fixture(scope="module")
def qpi_model():
    return cvdm_tf.load("builtin:qpi")


def _camera_frame(seed=11):
    """A camera frame (the centre 64 px of a 128 px cell field), the paper's noise: (pair [H, W, 2], phase)."""
    from cvdm_tf.data.phantoms import cell_phantom

    task = QPITask(DataConfig(camera_crop=64))
    phase = cell_phantom(128, np.random.default_rng(seed), peak=2.5).astype(np.float32)
    case = task.simulate_case("cells", phase, "paper", (seed, 0))
    return np.asarray(case.measurement, np.float32), np.asarray(case.truth, np.float32)


def test_predict_returns_the_phase_in_radians_at_the_measurements_pixel_size(qpi_model):
    pair, phase = _camera_frame()
    out = qpi_model.predict(pair, samples=4, wavelength_um=0.521, pixel_size_um=0.21, defocus_um=1.0)
    assert out.mean.shape == out.std.shape == out.schedule.shape == phase.shape
    assert out.unit == "rad" and out.pixel_size_um == pytest.approx(0.21) and out.samples is None
    assert (out.std >= 0).all() and out.std.max() > 0
    # In radians: the least-squares gain from the mean to the truth is near 1 (measured 0.80 for this frame; the
    # model's normalised units, phase_max / 2 = 1.75 rad each, would give 1.4), and the two agree in shape.
    mean, truth = (np.ravel(a - a.mean()) for a in (out.mean, phase))
    assert 0.6 < (mean @ truth) / (mean @ mean) < 1.2 and np.corrcoef(mean, truth)[0, 1] > 0.7
    assert qpi_model.card["name"] == "qpi"
    told = qpi_model.predict(pair, samples=4, pixel_size_um=0.3)  # the outputs carry the measurement's pixels
    assert told.pixel_size_um == pytest.approx(0.3)


def test_predict_takes_the_pair_either_way_round_and_its_defaults_are_the_runs_sampler(qpi_model):
    pair, _ = _camera_frame(seed=3)
    sampler = qpi_model.config.sampler
    default = qpi_model.predict(pair, seed=1)
    told = qpi_model.predict(np.moveaxis(pair, -1, 0), samples=sampler.samples, steps=sampler.steps,
                             method=sampler.method, seed=1)
    np.testing.assert_allclose(default.mean, told.mean, atol=1e-5)
    other = qpi_model.predict(pair, samples=2, steps=2, seed=1)
    assert np.abs(other.mean - default.mean).max() > 1e-3


def test_predict_refuses_physics_outside_the_range_and_unknown_keywords(qpi_model):
    pair, _ = _camera_frame()
    with pytest.raises(InputError, match="outside the model's training range.*pixel size 0.1-0.35 um"):
        qpi_model.predict(pair, pixel_size_um=1.0)
    with pytest.raises(InputError, match="wavelength: not a physical parameter"):
        qpi_model.predict(pair, wavelength=0.5)
    with pytest.raises(InputError, match="channel"):
        qpi_model.predict(pair[..., :1])


def test_predict_agrees_with_infer_on_the_same_file(tiny_run, tmp_path):
    """The API and `cvdm-tf infer` read and sample alike: same seed, K, T -> the same mean and std."""
    from cvdm_tf.inference import infer_paths

    pair, _ = _camera_frame()
    pair = pair[:32, :32]
    io.write_tiff(tmp_path / "pair.tif", pair)
    infer_paths(tiny_run, tmp_path / "pair.tif", tmp_path / "out", samples=3, steps=2, seed=4)
    out = cvdm_tf.load(tiny_run).predict(pair, samples=3, steps=2, seed=4)
    np.testing.assert_allclose(out.mean, tifffile.imread(tmp_path / "out" / "pair_mean.tif"), atol=1e-5)
    np.testing.assert_allclose(out.std, tifffile.imread(tmp_path / "out" / "pair_std.tif"), atol=1e-5)
    assert cvdm_tf.load(tiny_run).card is None


def test_kept_samples_make_up_the_mean_and_std_on_the_2x_grid():
    """BioSR (no refinement): the samples come back in the input's units on the 2x grid, and mean and std are
    theirs (the untiled image: one tile, so blending changes nothing)."""
    model = cvdm_tf.load("builtin:biosr")
    rng = np.random.default_rng(0)
    widefield = (200 + 50 * rng.random((24, 24))).astype(np.uint16)
    out = model.predict(widefield, samples=4, steps=2, method="ddim", keep_samples=True)
    assert out.mean.shape == (48, 48) and out.samples.shape == (4, 48, 48)
    np.testing.assert_allclose(out.samples.mean(axis=0), out.mean, rtol=1e-4, atol=1e-3)
    ddof = 0 if model.config.sampler.antithetic else 1  # antithetic pairs: the std of K / 2 pairs (sampler.py)
    np.testing.assert_allclose(out.samples.std(axis=0, ddof=ddof), out.std, rtol=1e-3, atol=1e-2)
    assert out.pixel_size_um == pytest.approx(model.task.output_pixel_size_um)


def test_the_readme_example_runs(tmp_path):
    """examples/predict.py, as a user runs it: the phase of the sample frame in radians, written as OME-TIFF."""
    import subprocess
    import sys
    from pathlib import Path

    from cvdm_tf.data.stacks import pixel_size_um

    script = Path(__file__).resolve().parents[1] / "examples" / "predict.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "phase.tif")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "phase 64 x 64 px of 0.21 um" in proc.stdout and " rad, mean std " in proc.stdout
    assert tifffile.imread(tmp_path / "phase.tif").shape == (64, 64)
    assert pixel_size_um(tmp_path / "phase.tif") == pytest.approx(0.21)
