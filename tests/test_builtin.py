"""Built-in models: they ship with the package, load offline, and score what their cards say."""

import configparser
import fnmatch
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cvdm_tf import builtin
from cvdm_tf.cli.main import main

REPO = Path(__file__).resolve().parents[1]
NAMES = builtin.names()


def test_the_tasks_models_are_built_in():
    assert {"qpi", "biosr"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_file_of_a_model_is_package_data_and_small(name):
    """A non-editable install ships exactly what setup.cfg's package_data matches: every file must match."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in setup["options.package_data"]["cvdm_tf.builtin"].split(",")]
    files = [p for p in builtin.folder(name).rglob("*") if p.is_file()]
    for path in files:
        relative = path.relative_to(builtin.ROOT).as_posix()
        assert any(fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/") for p in patterns), relative
    assert sum(p.stat().st_size for p in files) < 10e6


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_model_scores_what_its_card_says(name):
    """Re-score the card's check (the shipped held-out set, `cvdm-tf eval`'s code path): the model is within the
    card's tolerance of its stated score and better than the task's oracle-tuned classical baseline."""
    from cvdm_tf.evaluation import evaluate
    from cvdm_tf.runs import load_run

    card = builtin.card(name)
    check = card["check"]
    config, task, model = load_run(f"builtin:{name}")
    assert config.task == card["task"] and model.count_params() == card["parameters"]
    task = builtin.check_task(name, task)  # e.g. QPI's camera frames of the shipped fields
    report = evaluate(config, task, model, builtin.heldout(name), samples=check["samples"], seed=check["seed"],
                      baselines=[check["baseline"]])
    measured = report["mean"]["cvdm"][check["metric"]]
    stated = check["scores"]["cvdm"]
    assert measured == pytest.approx(stated, rel=check["tolerance"])
    # The baseline is deterministic: its score is the card's up to float round-off.
    assert report["mean"][check["baseline"]][check["metric"]] == pytest.approx(check["scores"][check["baseline"]],
                                                                               rel=1e-3)
    baseline = report["mean"][check["baseline"]][check["metric"]]
    assert measured < baseline if check["better"] == "lower" else measured > baseline


def test_models_command_lists_the_cards():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert f"builtin:{name}" in result.output
        assert builtin.card(name)["commit"] in result.output
    result = CliRunner().invoke(main, ["models", "nope"])
    assert result.exit_code == 2 and "builtin:nope: no such built-in model" in result.output


def test_unknown_builtin_model_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["infer", "--model", "builtin:nope", "--input", str(tmp_path), "--out",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: builtin:nope: no such built-in model (built in: {', '.join('builtin:' + n for n in NAMES)})"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_builtin_qpi_beats_oracle_tie_on_a_simulated_noisy_camera_frame(tmp_path):
    """The first reconstruction of a new user, with no training: simulate a noisy camera frame of a held-out cell
    field (the centre 64 px of 128), `cvdm-tf infer --model builtin:qpi`, and compare with TIE tuned on the truth
    (the better of its FFT and DCT solvers)."""
    import tifffile

    from cvdm_tf.data.phantoms import cell_phantoms
    from cvdm_tf.metrics import mae, offset_free
    from cvdm_tf.physics.tie import tie_dct, tie_fft, tune_regularization

    d = builtin.load("builtin:qpi")[0].data
    field = cell_phantoms(1, 128, seed=77, peak=3.0)[0].astype(np.float32)
    tifffile.imwrite(tmp_path / "cell.tif", field)
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", "--input", str(tmp_path / "cell.tif"), "--out", str(tmp_path / "sim"),
                                  "--noise", "paper", "--seed", "3", "--camera-crop", "64"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["infer", "--model", "builtin:qpi", "--input", str(tmp_path / "sim" / "cell.tif"),
                                  "--out", str(tmp_path / "out"), "--samples", "16"])
    assert result.exit_code == 0, result.output
    estimate = tifffile.imread(tmp_path / "out" / "cell_mean.tif").astype(np.float64)
    pair = tifffile.imread(tmp_path / "sim" / "cell.tif")
    phase = tifffile.imread(tmp_path / "sim" / "cell_phase.tif").astype(np.float64)
    assert phase.shape == (64, 64)
    physics = dict(defocus_um=d.defocus_um, wavelength_um=d.wavelength_um, pixel_size_um=d.pixel_size_um)
    tie_errors = []
    for name, solve in (("fft", tie_fft), ("dct", tie_dct)):
        best, _ = tune_regularization(pair[None], phase[None], solver=name, **physics)
        tie = solve(pair[None], regularization=best, **physics).numpy()[0].astype(np.float64)
        tie_errors.append(mae(*offset_free(tie, phase)))
    assert mae(*offset_free(estimate, phase)) < min(tie_errors)


@pytest.mark.slow
def test_builtin_model_exports(tmp_path):
    import tensorflow as tf

    result = CliRunner().invoke(main, ["export", "--model", "builtin:biosr", "--out", str(tmp_path / "served"),
                                       "--steps", "2", "--samples", "2"])
    assert result.exit_code == 0, result.output
    served = tf.saved_model.load(str(tmp_path / "served"))
    out = served.signatures["serving_default"](condition=tf.random.uniform([1, 16, 16, 1], 50.0, 150.0))
    assert out["mean"].shape == (1, 32, 32, 1) and np.isfinite(out["mean"].numpy()).all()
