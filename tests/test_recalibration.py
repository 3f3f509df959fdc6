"""The std map's recalibration (cvdm_tf.recalibration): factors recovered from simulated samplers that are wrong
by a known amount, the file, and `cvdm-tf calibrate` -> `cvdm-tf infer` end to end on the tiny run."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from cvdm_tf import recalibration
from cvdm_tf.cli.main import main
from cvdm_tf.config import SamplerConfig
from cvdm_tf.data.phantoms import cell_phantoms
from cvdm_tf.errors import InputError

# P(|T| <= 1), P(|T| <= 2) of a Student-t, typed from cvdm-math.md section 10 (K - 1 dof) and scipy's tables
# (K / 2 = 2 dof for antithetic pairs at K = 4: 0.577 / 0.816), not computed by the code under test.
STUDENT_T_K8 = (0.65, 0.91)


def _sampler_wrong_by_level(rng, samples, factor_dark, factor_bright, images=6, size=96):
    """Images whose truth and samples are Gaussian around a ramp (its level 0 .. 1 across the columns); the
    samples' std is the truth's sigma times `factor_dark` on the left half, `factor_bright` on the right."""
    stds, errors, means = [], [], []
    ramp = np.tile(np.linspace(0.0, 100.0, size), (size, 1))  # range >> sigma: levels are the ramp's
    bright = ramp >= 50.0
    for _ in range(images):
        sigma = rng.lognormal(0.0, 0.4, (size, size))
        spread = sigma * np.where(bright, factor_bright, factor_dark)
        drawn = ramp + spread * rng.normal(size=(samples, size, size))
        truth = ramp + sigma * rng.normal(size=(size, size))
        mean = drawn.mean(axis=0)
        stds.append(drawn.std(axis=0, ddof=1))
        errors.append(mean - truth)
        means.append(mean)
    return stds, errors, means, bright


def test_fit_recovers_the_factors_of_a_sampler_too_wide_on_one_half_and_too_narrow_on_the_other():
    rng = np.random.default_rng(7)
    stds, errors, means, bright = _sampler_wrong_by_level(rng, 8, factor_dark=2.0, factor_bright=0.5)
    fit = recalibration.fit(stds, errors, means, samples=8, steps=10, method="ddpm", antithetic=False, bins=10)
    # Samples of spread f sigma: mean - truth has variance sigma^2 (1 + f^2 / K), the map says f^2 sigma^2 (1 + 1/K),
    # so the factor is sqrt(1 + f^2 / K) / (f sqrt(1 + 1/K)): 0.577 where 2x too wide, 1.915 where 2x too narrow.
    # (Bins 4 and 5 hold the step, where the mean's noise mixes the halves.)
    for factor, bins in ((2.0, slice(0, 4)), (0.5, slice(6, 10))):
        expected = np.sqrt(1 + factor**2 / 8) / (factor * np.sqrt(1 + 1 / 8))
        np.testing.assert_allclose(fit.scales[bins], expected, rtol=0.04)
    # On fresh draws the recalibrated map covers the truth at the Student-t rates on each half.
    stds, errors, means, bright = _sampler_wrong_by_level(rng, 8, factor_dark=2.0, factor_bright=0.5)
    c_k = np.sqrt(1 + 1 / 8)
    z = np.stack([np.abs(e) / (c_k * fit.apply(s, m)) for s, e, m in zip(stds, errors, means)])
    raw = np.stack([np.abs(e) / (c_k * s) for s, e in zip(stds, errors)])
    halves = np.broadcast_to(bright, z.shape)
    for half in (halves, ~halves):
        assert np.mean(z[half] <= 1) == pytest.approx(STUDENT_T_K8[0], abs=0.02)
        assert np.mean(z[half] <= 2) == pytest.approx(STUDENT_T_K8[1], abs=0.02)
    assert np.mean(raw[halves] <= 1) < 0.45 and np.mean(raw[~halves] <= 1) > 0.8  # what it mended


def test_a_calibrated_antithetic_sampler_keeps_factor_one():
    """Antithetic pairs (ddof 0, their mean the centre): no sqrt(1 + 1/K), a Student-t with K / 2 dof."""
    rng = np.random.default_rng(11)
    stds, errors, means = [], [], []
    ramp = np.tile(np.linspace(0.0, 100.0, 128), (128, 1))
    for _ in range(6):
        sigma = rng.lognormal(0.0, 0.4, ramp.shape)
        half = sigma * rng.normal(size=(2, *ramp.shape))
        drawn = ramp + np.concatenate([half, -half])
        truth = ramp + sigma * rng.normal(size=ramp.shape)
        stds.append(drawn.std(axis=0, ddof=0))
        errors.append(drawn.mean(axis=0) - truth)
        means.append(drawn.mean(axis=0))
    fit = recalibration.fit(stds, errors, means, samples=4, steps=4, method="ddpm", antithetic=True, bins=4)
    np.testing.assert_allclose(fit.scales, 1.0, rtol=0.04)  # with sqrt(1 + 1/4) wrongly applied: 0.89


def test_levels_ignore_offset_and_scale_and_a_flat_image_is_level_zero():
    image = np.random.default_rng(0).normal(size=(20, 30))
    np.testing.assert_array_equal(recalibration.level_bins(image), recalibration.level_bins(3.0 * image - 7.0))
    assert recalibration.level_bins(image).min() == 0 and recalibration.level_bins(image).max() == 9
    assert not recalibration.level_bins(np.full((4, 4), 2.5)).any()


def test_the_file_keeps_one_fit_per_setting_and_refuses_a_damaged_one(tmp_path):
    first = recalibration.Recalibration((0.5, 2.0), 8, 10, "ddpm", True, 64, "validation")
    other = recalibration.Recalibration((1.0, 1.5), 4, 4, "ddpm", True, 64, "validation")
    recalibration.save(first, tmp_path)
    recalibration.save(other, tmp_path)
    recalibration.save(first.__class__((0.6, 1.9), 8, 10, "ddpm", True, 32, "again"), tmp_path)
    fits = recalibration.load(tmp_path)
    assert len(fits) == 2
    sampler = SamplerConfig(steps=10, samples=8, method="ddpm", antithetic=True)  # the run's setting
    assert recalibration.find(fits, sampler).scales == (0.6, 1.9)
    assert recalibration.find(fits, sampler, samples=4, steps=4) == other
    assert recalibration.find(fits, sampler, method="ddim") is None
    assert recalibration.find(fits, dataclasses.replace(sampler, antithetic=False)) is None
    (tmp_path / recalibration.FILE).write_text('{"fits": [{"scales": [1.0, -2.0], "samples": 8, "steps": 4, '
                                               '"method": "ddpm", "antithetic": true, "images": 3}]}')
    with pytest.raises(InputError, match="recalibration.json: a recalibration factor is not a positive number"):
        recalibration.load(tmp_path)
    (tmp_path / recalibration.FILE).write_text("{not json")
    with pytest.raises(InputError, match="recalibration.json: not a recalibration file"):
        recalibration.load(tmp_path)


@pytest.mark.slow
def test_calibrate_then_infer_writes_the_std_map_scaled_by_the_factor_of_each_level(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # the session's run stays as other tests expect it
    truth = tmp_path / "truth"
    truth.mkdir()
    for i, phase in enumerate(cell_phantoms(3, 32, seed=9, peak=2.0)):
        tifffile.imwrite(truth / f"cell{i}.tif", phase)
    runner = CliRunner()
    # Camera frames (eval's task options): the central 16 px of each 32 px field.
    result = runner.invoke(main, ["calibrate", "--model", str(run), "--data", str(truth), "--samples", "2",
                                  "--steps", "3", "--camera-crop", "16", "--boundary", "camera"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "recalibration.json").read_text())["fits"]
    assert [(f["samples"], f["steps"], f["method"], f["images"]) for f in saved] == [(2, 3, "ddpm", 3)]
    factors = np.asarray(saved[0]["scales"])
    assert factors.shape == (10,) and (factors > 0).all()

    measured = tmp_path / "measured"
    result = runner.invoke(main, ["simulate", "--task", "qpi", "--input", str(truth), "--out", str(measured)])
    assert result.exit_code == 0, result.output
    (measured / "cell0_phase.tif").unlink()
    result = runner.invoke(main, ["infer", "--model", str(run), "--input", str(measured / "cell0.tif"), "--out",
                                  str(tmp_path / "out"), "--samples", "2", "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert "NAME_std_recalibrated: the std recalibrated on 3 validation image(s) at K = 2, T = 3 ddpm" in result.output
    mean = tifffile.imread(tmp_path / "out" / "cell0_mean.tif")
    std = tifffile.imread(tmp_path / "out" / "cell0_std.tif")
    with tifffile.TiffFile(tmp_path / "out" / "cell0_std_recalibrated.tif") as tif:
        recalibrated = tif.asarray()
        assert "std recalibrated on validation images (rad)" in tif.ome_metadata
    # Recomputed here from the written files: the level of each pixel of the mean, its decile's factor.
    level = (mean - mean.min()) / (mean.max() - mean.min())
    expected = std * factors[np.clip((level * 10).astype(int), 0, 9)]
    np.testing.assert_allclose(recalibrated, expected, rtol=1e-5)

    # Another setting has no fit: the raw map only, and infer says so.
    result = runner.invoke(main, ["infer", "--model", str(run), "--input", str(measured / "cell0.tif"), "--out",
                                  str(tmp_path / "other"), "--samples", "3", "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert "no recalibration of the std map for this sampler setting" in result.output
    assert not (tmp_path / "other" / "cell0_std_recalibrated.tif").exists()


def test_calibrate_refuses_to_write_into_a_builtin_model_before_sampling(tmp_path):
    result = CliRunner().invoke(main, ["calibrate", "--model", "builtin:biosr", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "builtin:biosr: a built-in model's folder is not yours to write; pass --out FOLDER" in result.output
    result = CliRunner().invoke(main, ["calibrate", "--model", "builtin:biosr", "--data", str(tmp_path / "none"),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2 and "none: no such file or folder" in result.output
    (tmp_path / "recalibration.json").write_text("{}")  # damaged: refused before any sampling, and kept
    result = CliRunner().invoke(main, ["calibrate", "--model", "builtin:biosr", "--data", str(tmp_path),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2 and "recalibration.json: not a recalibration file" in result.output
    assert "tensorflow" not in result.output.lower() and (tmp_path / "recalibration.json").read_text() == "{}"


@pytest.mark.slow
def test_builtin_biosr_serves_its_recalibrated_std_map_at_its_card_setting():
    """The shipped fit travels with the package (setup.cfg's package data) and the API and napari layers use it."""
    from importlib import resources

    from cvdm_tf import api
    from cvdm_tf.napari.layers import output_layers

    folder = resources.files("cvdm_tf") / "builtin" / "biosr"
    fits = json.loads((folder / "recalibration.json").read_text())["fits"]
    card_fit = next(f for f in fits if (f["samples"], f["steps"], f["antithetic"]) == (4, 4, True))
    widefield = tifffile.imread(folder / "heldout" / "wf" / "er_001.tif")
    model = api.load("builtin:biosr")
    prediction = model.predict(widefield, seed=3)
    level = (prediction.mean - prediction.mean.min()) / (prediction.mean.max() - prediction.mean.min())
    factors = np.asarray(card_fit["scales"])[np.clip((level * 10).astype(int), 0, 9)]
    np.testing.assert_allclose(prediction.std_recalibrated, prediction.std * factors, rtol=1e-5)
    names = [kwargs["name"] for _, kwargs, _ in output_layers(prediction, "er")]
    assert names == ["er_mean", "er_mean_network", "er_std", "er_std_recalibrated", "er_schedule"]
    assert model.predict(widefield, samples=6, seed=3).std_recalibrated is None  # no fit at K = 6


@pytest.mark.slow
def test_eval_scores_the_recalibrated_map_where_the_run_has_a_fit(tiny_run, tmp_path):
    """Factors of 1 leave the coverage as the raw map's; factors of 1e6 put every pixel within 1 std."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    truth = tmp_path / "truth"
    truth.mkdir()
    for i, phase in enumerate(cell_phantoms(2, 32, seed=4, peak=2.0)):
        tifffile.imwrite(truth / f"cell{i}.tif", phase)
    reports = []
    for factor in (1.0, 1e6):
        recalibration.save(recalibration.Recalibration((factor,) * 10, 2, 3, "ddpm", False, 1, "test"), run)
        report_path = tmp_path / f"report{factor:g}.json"
        result = CliRunner().invoke(main, ["eval", "--model", str(run), "--data", str(truth), "--samples", "2",
                                           "--steps", "3", "--baseline", "tie", "--out", str(report_path)])
        assert result.exit_code == 0, result.output
        assert "recalibrated: within 1 std" in result.output
        reports.append(json.loads(report_path.read_text())["mean"]["cvdm"])
    same, wide = reports
    assert same["recalibrated_within_1_std"] == pytest.approx(same["within_1_std"])
    assert same["recalibrated_within_2_std"] == pytest.approx(same["within_2_std"])
    assert same["within_1_std"] < 1.0 and wide["recalibrated_within_1_std"] == 1.0
